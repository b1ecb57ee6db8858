"""Mutual recognition of examination and test results (检查检验结果互认, national measures of 2022).

Quality assessments (室间质评) decide a result's HR mark (`service.mark_for`, called by results/ at insert);
at ordering the patient's marked, still-valid results from any member are shown and either used or ordered
again with a reason from the national list; HL7 orders from members' HIS arrive via `record_external_order`.
The repeats page counts recognised and repeated results per organisation and month, with the money saved.
"""
