"""The node's tables. Alembic migrations in ``migrations/`` are the source of truth on disk;
these definitions must match them (a test compares the two)."""

from __future__ import annotations

import time

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Times are unix seconds (float): cheap to compare and identical on SQLite and PostgreSQL.

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(63), nullable=False),
    Column("tenant", String(63), nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
)

providers = Table(
    "providers",
    metadata,
    Column("cpi", String(255), primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("public_key", String(64), nullable=False),
    Column("display_name", String(128), nullable=False, default=""),
    Column("owner_tenant", String(63), nullable=False),
    Column("created_at", Float, nullable=False),
)

pools = Table(
    "pools",
    metadata,
    Column("cpi", String(255), primary_key=True),
    Column("provider_cpi", String(255), ForeignKey("providers.cpi"), nullable=False),
    Column("name", String(63), nullable=False),
    Column("backend", String(32), nullable=False),
    Column("region", String(63), nullable=False, default=""),
    Column("labels", JSON, nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("machines", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("cap_cpus", Float, nullable=False),
    Column("cap_memory", BigInteger, nullable=False),
    Column("cap_gpus", Integer, nullable=False),
    Column("alloc_cpus", Float, nullable=False, default=0),
    Column("alloc_memory", BigInteger, nullable=False, default=0),
    Column("alloc_gpus", Integer, nullable=False, default=0),
    Column("registered_at", Float, nullable=False),
    Column("last_heartbeat_at", Float),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("telemetry", JSON),
    Column("price", JSON),
    Column("carbon_intensity", Float),
    Column("scu", Float),
    Column("calibration", JSON),
    Column("queue_factor", Float, nullable=False, server_default="0"),
    Column("calibrate_requested_at", Float),
    # What the scheduler matches accelerator requests against (see ``pools.traits_of``).
    Column("traits", JSON),
    Column("runtime", JSON),
    Column("data_endpoint", JSON),
    # The token the pool last registered with: revoked, the pool's signatures count for
    # nothing. None for pools registered before the column was (migration 0014).
    Column("token_id", String(32)),
    # When allocation or status last changed: how a replica's live index catches up by
    # reading only what changed. Heartbeats keep it as it is (see ``record_beats``).
    Column(
        "changed_at",
        Float,
        nullable=False,
        server_default="0",
        default=time.time,
        onupdate=time.time,
        index=True,
    ),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("name", String(128), nullable=False, default=""),
    Column("spec", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("req_cpus", Float, nullable=False),
    Column("req_memory", BigInteger, nullable=False),
    Column("req_gpus", Integer, nullable=False),
    Column("pin_pool", String(255)),
    Column("pool_cpi", String(255)),
    Column("attempt", Integer, nullable=False, default=0),
    Column("exit_code", Integer),
    Column("reason", Text, nullable=False, default=""),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("scheduled_at", Float),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("updated_at", Float, nullable=False),
    Index("ix_jobs_state_priority", "state", "priority", "created_at"),
    Index("ix_jobs_tenant_created", "tenant", "created_at"),
    Index("ix_jobs_pool_state", "pool_cpi", "state"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("job_id", String(48), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("pool_cpi", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("cpus", Float, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("devices", JSON, nullable=False),
    Column("delivered", Boolean, nullable=False, default=False),
    Column("cancel_delivered", Boolean, nullable=False, default=False),
    Column("scheduled_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("exit_code", Integer),
    Column("reason", Text, nullable=False, default=""),
    Index("ix_attempts_pool_state", "pool_cpi", "state"),
)

logs = Table(
    "logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(48), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("stream", String(8), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_logs_job", "job_id", "id"),
)

usage = Table(
    "usage",
    metadata,
    Column("job_id", String(48), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("pool_cpi", String(255), nullable=False),
    Column("cpus", Float, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("wall_seconds", Float, nullable=False),
    Column("cpu_seconds", Float, nullable=False),
    Column("max_rss_bytes", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=False),
    Index("ix_usage_tenant", "tenant", "ended_at"),
)


tenants = Table(
    "tenants",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("weight", Float, nullable=False, default=1.0),
    Column("max_cpus", Float),
    Column("max_gpus", Integer),
    Column("max_data", BigInteger),
    Column("updated_at", Float, nullable=False),
)

# The nodes this node delegated a code to, and the one-time tokens that let them join.
children = Table(
    "children",
    metadata,
    Column("code", String(255), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("delegation", JSON, nullable=False),
    Column("joined_at", Float, nullable=False),
)

invites = Table(
    "invites",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("code", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
)

# Jobs submitted here that run at another node: where, and under which id there.
forwards = Table(
    "forwards",
    metadata,
    Column("job_id", String(48), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("node_url", String(2000), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("remote_id", String(48), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Dataset versions, immutable once published, and the pools that hold a copy of each.
datasets = Table(
    "datasets",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("tree_hash", String(64), nullable=False),
    Column("total_bytes", BigInteger, nullable=False),
    Column("files", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    # A removed version keeps its row, so that NAME@VERSION never names other data later.
    Column("removed_at", Float, nullable=True),
    Index("ix_datasets_name_created", "name", "created_at"),
)

# The links between pools, as the copies that crossed them measured: the data locality
# score counts the seconds an input would take to move, not only its bytes.
links = Table(
    "pool_links",
    metadata,
    Column("source", String(255), primary_key=True),
    Column("destination", String(255), primary_key=True),
    Column("rate", Float, nullable=False),
    Column("samples", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

replicas = Table(
    "dataset_replicas",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("pool_cpi", String(255), primary_key=True),
    Column("path", String(4096), nullable=False),
    Column("added_at", Float, nullable=False),
    ForeignKeyConstraint(
        ["name", "version"], ["datasets.name", "datasets.version"], ondelete="CASCADE"
    ),
)
