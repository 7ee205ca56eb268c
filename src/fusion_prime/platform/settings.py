"""Settings shared by every service process.

DATABASE_URL deliberately has no default: a missing value must stop the process
(see the persistence rule in DESIGN.md), never select a fallback store.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "test", "production"]
BusKind = Literal["postgres", "pubsub"]


class BaseServiceSettings(BaseSettings):
    """Fields every service reads from the environment."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    fp_env: Environment = Field(default="development", alias="FP_ENV")
    fp_bus: BusKind = Field(default="postgres", alias="FP_BUS")
    fp_bus_url: str | None = Field(default=None, alias="FP_BUS_URL")
    gcp_project: str | None = Field(default=None, alias="GCP_PROJECT")
    db_connect_timeout: float = Field(default=30.0, alias="FP_DB_CONNECT_TIMEOUT", gt=0)
    db_pool_size: int = Field(default=10, alias="FP_DB_POOL_SIZE", ge=1)
    log_level: str = Field(default="INFO", alias="FP_LOG_LEVEL")

    @property
    def production(self) -> bool:
        return self.fp_env == "production"
