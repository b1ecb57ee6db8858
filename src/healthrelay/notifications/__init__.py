"""Notifications: the in-app inbox, live push to open pages, and outbound email/SMS/WeChat."""
