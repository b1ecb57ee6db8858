"""hl7"""
from healthrelay.hl7 import outbound as outbound  # noqa: E402,F401
