"""Shared results (检查检验结果): lab results and examination reports from every member, one patient-wide view.

Importing the package registers the hook that turns a final remote-diagnosis report into an examination result,
so every process that loads the models (web app, worker, HL7 listener) writes it.
"""

from healthrelay.results import flows as flows  # noqa: E402,F401
