"""Emergency alliance (急救联盟): 120 calls, ambulances and stations, dispatch, response metrics, coverage."""
