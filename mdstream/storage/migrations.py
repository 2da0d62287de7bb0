"""Every PostgreSQL schema migration, in one place below the modules that use the tables.

Each migration is named ``<area>/<nnn>`` and never edited once released (a change is a new
migration); :func:`mdstream.storage.postgres.migrate` applies those not yet recorded, in order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str


#: Frequency → span of one partition (or TimescaleDB chunk).
FREQUENCIES: dict[str, str] = {"1s": "day", "1m": "month", "1h": "year", "1d": "year"}
_CHUNK = {"day": "1 day", "month": "1 month", "year": "1 year"}

_BAR_TABLE = """(
    instrument   text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    open         double precision NOT NULL,
    high         double precision NOT NULL,
    low          double precision NOT NULL,
    close        double precision NOT NULL,
    volume       double precision NOT NULL,
    vwap         double precision,
    trade_count  bigint NOT NULL DEFAULT 0,
    revision     integer NOT NULL DEFAULT 0,
    event_id     text,
    sources      text[] NOT NULL DEFAULT '{}',
    written_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (instrument, window_start))"""


def _bars_ddl() -> str:
    """Hypertables when TimescaleDB is installed in the database, else partitioned tables."""
    branches = "\n".join(
        f"""
    IF hyper THEN
        CREATE TABLE bars_{freq} {_BAR_TABLE};
        PERFORM create_hypertable('bars_{freq}', 'window_start',
                                  chunk_time_interval => interval '{_CHUNK[span]}');
    ELSE
        CREATE TABLE bars_{freq} {_BAR_TABLE} PARTITION BY RANGE (window_start);
    END IF;"""
        for freq, span in FREQUENCIES.items()
    )
    return (
        "DO $$\nDECLARE\n"
        "    hyper boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');\n"
        f"BEGIN{branches}\nEND $$;"
    )


_CORPORATE_ACTIONS = (
    Migration(
        "corporate_actions/001",
        """
        CREATE OR REPLACE FUNCTION mdstream_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;

        CREATE TABLE corporate_action_audit (
            audit_key       text PRIMARY KEY,
            announcement_id text,
            event_key       text NOT NULL,
            instrument_id   text NOT NULL,
            symbol          text NOT NULL,
            kind            text NOT NULL,
            ex_date         date NOT NULL,
            record_date     date,
            ratio           double precision,
            amount          double precision,
            currency        text,
            new_symbol      text,
            source          text NOT NULL,
            announced_at    timestamptz,
            known_at        timestamptz NOT NULL,
            outcome         text NOT NULL,
            reason          text NOT NULL,
            price_factor    double precision,
            volume_factor   double precision,
            reference_date  date,
            reference_close double precision,
            isin            text,
            recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX corporate_action_audit_event ON corporate_action_audit (event_key, outcome);

        CREATE TABLE adjustment_factors (
            audit_key       text PRIMARY KEY REFERENCES corporate_action_audit (audit_key),
            instrument_id   text NOT NULL,
            symbol          text NOT NULL,
            ex_date         date NOT NULL,
            kind            text NOT NULL,
            price_factor    double precision NOT NULL CHECK (price_factor > 0),
            volume_factor   double precision NOT NULL CHECK (volume_factor > 0),
            ratio           double precision,
            distribution    double precision NOT NULL,
            currency        text,
            reference_date  date,
            reference_close double precision,
            source          text NOT NULL,
            known_at        timestamptz NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX adjustment_factors_instrument ON adjustment_factors (instrument_id, known_at);

        CREATE TRIGGER corporate_action_audit_append_only
            BEFORE UPDATE OR DELETE OR TRUNCATE ON corporate_action_audit
            FOR EACH STATEMENT EXECUTE FUNCTION mdstream_refuse_change();
        CREATE TRIGGER adjustment_factors_append_only
            BEFORE UPDATE OR DELETE OR TRUNCATE ON adjustment_factors
            FOR EACH STATEMENT EXECUTE FUNCTION mdstream_refuse_change();
        """,
    ),
)

_BAR_SINK = (
    Migration(
        "bar_sink/001",
        """
        CREATE TABLE sink_offsets (
            consumer    text NOT NULL,
            topic       text NOT NULL,
            partition   integer NOT NULL,
            next_offset bigint NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (consumer, topic, partition)
        );
        CREATE TABLE sink_dead_letters (
            topic       text NOT NULL,
            partition   integer NOT NULL,
            "offset"    bigint NOT NULL,
            consumer    text NOT NULL,
            reason      text NOT NULL,
            key         bytea,
            payload     bytea NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (topic, partition, "offset")
        );
        """,
    ),
)

_BARS = (Migration("bars/001", _bars_ddl()),)


#: mdstream.storage.lifecycle: where each partition moved to the cold tier (S3 Parquet).
_LIFECYCLE = (
    Migration(
        "lifecycle/001",
        """
        CREATE TABLE bar_tiers (
            freq            text NOT NULL,
            partition_start timestamptz NOT NULL,
            partition_end   timestamptz NOT NULL,
            object_key      text NOT NULL,
            rows            bigint NOT NULL,
            min_start       timestamptz,
            max_start       timestamptz,
            moved_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
            dropped_at      timestamptz,
            PRIMARY KEY (freq, partition_start)
        );
        """,
    ),
)


#: mdstream.storage.quality_history: each stored bar's quality, provider, latency and lineage.
_QUALITY_HISTORY = (
    Migration(
        "quality_history/001",
        """
        CREATE TABLE quality_history (
            instrument       text NOT NULL,
            interval         text NOT NULL,
            window_start     timestamptz NOT NULL,
            revision         integer NOT NULL DEFAULT 0,
            provider         text NOT NULL,
            window_end       timestamptz NOT NULL,
            emitted_at       timestamptz NOT NULL,
            completeness     double precision NOT NULL,
            accuracy         double precision NOT NULL,
            timeliness       double precision NOT NULL,
            reliability      double precision NOT NULL,
            consistency      double precision NOT NULL,
            quality_score    double precision,
            checks_passed    text[] NOT NULL DEFAULT '{}',
            flags            text[] NOT NULL DEFAULT '{}',
            quality_model    text,
            raw_partition    integer,
            raw_offset_first bigint,
            raw_offset_last  bigint,
            raw_batches      bigint NOT NULL DEFAULT 0,
            raw_ticks        bigint NOT NULL DEFAULT 0,
            event_id         text,
            recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (instrument, interval, window_start, revision)
        );
        CREATE INDEX quality_history_provider ON quality_history (provider, interval, window_start);
        """,
    ),
)


def all_migrations() -> tuple[Migration, ...]:
    """Every migration in the order it must run (append new areas at the end)."""
    return (*_CORPORATE_ACTIONS, *_BARS, *_BAR_SINK, *_LIFECYCLE, *_QUALITY_HISTORY)
