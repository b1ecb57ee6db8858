"""Free clinics (义诊), mobile check-ups (巡回体检) and school check-ups: events, on-site registration, results."""
