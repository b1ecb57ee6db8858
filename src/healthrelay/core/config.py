"""Settings read from HEALTHRELAY_* environment variables and an optional .env file."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEALTHRELAY_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    secret_key: str = ""
    # Where `npm ci` put the front-end packages (htmx, echarts).
    assets_dir: Path = Path("./node_modules")
    max_body_bytes: int = 2 * 1024 * 1024
    session_max_age_seconds: int = 12 * 3600
    token_max_age_seconds: int = 12 * 3600
    break_glass_minutes: int = 120
    login_max_failures: int = 5
    login_lock_minutes: int = 15
    cookie_secure: bool = False
    # Outbound notifications. Email is sent when smtp_host is set; SMS and WeChat messages wait in
    # the outbox (status "held") until a gateway is configured.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "healthrelay@localhost"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    sms_gateway_url: str = ""
    wechat_gateway_url: str = ""
    # Referral attachments: what may be attached and how large (bytes).
    attachment_max_bytes: int = 10 * 1024 * 1024
    # DICOM receiver (C-ECHO, C-STORE from registered modalities). `healthrelay serve` runs it in the
    # web process unless --no-dicom; `healthrelay dicom` runs it alone. Modalities must reach
    # dicom_host, so a real site sets it to the LAN address (or 0.0.0.0).
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = "HEALTHRELAY"
    # HL7 v2 MLLP listener (ADT, ORU, ORM/OML from members' HIS and LIS). `healthrelay serve` runs it in the
    # web process unless --no-hl7; `healthrelay hl7` runs it alone. A real site sets hl7_host to the LAN address.
    hl7_host: str = "127.0.0.1"
    hl7_port: int = 2575
    # Where DICOM instances are kept: "local" (files under <data dir>/dicom) or "orthanc" (an Orthanc
    # server with its DICOMweb plugin at orthanc_url, e.g. http://127.0.0.1:8042).
    imaging_backend: str = "local"
    orthanc_url: str = ""
    orthanc_username: str = ""
    orthanc_password: str = ""
    # Largest STOW-RS upload (bytes): a CT series of a few hundred slices.
    stow_max_bytes: int = 1024 * 1024 * 1024
    # Tests and `healthrelay demo` may allow a faster password hash; never in production.
    fast_password_hash: bool = Field(default=False)

    def model_post_init(self, __context: object) -> None:
        self.data_dir = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'healthrelay.sqlite3'}"
        if not self.secret_key:
            self.secret_key = _load_or_create_secret(self.data_dir / "secret_key")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _load_or_create_secret(path: Path) -> str:
    """Keep one secret per data dir so sessions survive restarts and are shared by processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(key)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
