"""Expert outreach and capacity building: studios, aid rotations, extension clinics, bookings, impact, rosters."""
