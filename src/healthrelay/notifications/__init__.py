"""Notifications: the in-app inbox, live push to open pages, and outbound email/SMS/WeChat."""

from healthrelay.notifications import flows  # noqa: F401 - registers the delivery timer handler
