-- Read replicas: what a server that may be a streaming standby says about itself, for
-- a reader that sends its reads there (the HTTP service's --read-dsn).

-- name: replica_status
-- in_recovery: a standby (false: a primary, whose data is current by definition).
-- lag_seconds: 0 when the standby has replayed all the WAL it has received (it is as
-- current as it knows), else how long ago the last transaction it replayed committed on
-- the primary. Not "now - last replay" alone: on an idle primary that grows for ever
-- though nothing is missing. NULL: unknown (nothing streamed, or nothing replayed,
-- since the standby started). receiving: a WAL receiver is running (false: streaming stopped,
-- so the standby cannot know what it misses). lag_bytes: received but not replayed.
-- pg_is_wal_replay_paused() raises on a primary: asked only on a standby.
SELECT
    pg_is_in_recovery() AS in_recovery,
    CASE
        WHEN NOT pg_is_in_recovery() THEN 0::float8
        WHEN pg_last_wal_receive_lsn() IS NULL THEN NULL
        WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8
        ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
    END AS lag_seconds,
    CASE WHEN pg_is_in_recovery()
        THEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver) ELSE true
    END AS receiving,
    CASE WHEN pg_is_in_recovery()
        THEN coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint
        ELSE 0::bigint
    END AS lag_bytes,
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END AS replay_paused
