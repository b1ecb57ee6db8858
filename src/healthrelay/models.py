"""Import every domain's tables so SQLAlchemy metadata (and Alembic) sees the whole schema."""

from healthrelay.access import models as access_models  # noqa: F401
from healthrelay.accounts import models as accounts_models  # noqa: F401
from healthrelay.audit import models as audit_models  # noqa: F401
from healthrelay.chronic import models as chronic_models  # noqa: F401
from healthrelay.core import timers as core_timers  # noqa: F401
from healthrelay.core.db import Base
from healthrelay.directory import models as directory_models  # noqa: F401
from healthrelay.ecg import models as ecg_models  # noqa: F401
from healthrelay.emergency import models as emergency_models  # noqa: F401
from healthrelay.geo import models as geo_models  # noqa: F401
from healthrelay.hl7 import models as hl7_models  # noqa: F401
from healthrelay.imaging import models as imaging_models  # noqa: F401
from healthrelay.notifications import models as notifications_models  # noqa: F401
from healthrelay.outreach import models as outreach_models  # noqa: F401
from healthrelay.pathways import models as pathways_models  # noqa: F401
from healthrelay.patients import models as patients_models  # noqa: F401
from healthrelay.recognition import models as recognition_models  # noqa: F401
from healthrelay.referrals import models as referrals_models  # noqa: F401
from healthrelay.results import models as results_models  # noqa: F401
from healthrelay.screening import models as screening_models  # noqa: F401
from healthrelay.teleconsult import models as teleconsult_models  # noqa: F401

metadata = Base.metadata
