"""Geography for planning and dispatch: the county road network and travel times on it."""
