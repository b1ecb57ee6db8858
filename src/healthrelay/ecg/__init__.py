"""Tele-ECG (远程心电): waveform ingest from devices, the 12-lead tracing, automatic measurements, ECG reports."""
