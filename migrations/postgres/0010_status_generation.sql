-- A counter that moves whenever a status view's inputs outside the change log move: sync status
-- rows, clusters (connectivity, last seen, labels, state) and drift events. `keyfleet status`
-- (GetStatus) answers from a snapshot while this counter and the change log stand still, so any
-- number of callers cost one computation per status flush, on every replica alike.
-- A sequence, bumped by statement-level triggers: nextval never blocks and takes no row lock, so
-- writers on different replicas never queue on it.
CREATE SEQUENCE status_generation;
-- `last_value` of a sequence never drawn from stays put on the first draw: draw once here.
SELECT nextval('status_generation');

CREATE FUNCTION keyfleet_bump_status_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('status_generation');
    RETURN NULL;
END
$$;

CREATE TRIGGER sync_status_generation AFTER INSERT OR UPDATE OR DELETE ON sync_status
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_bump_status_generation();
CREATE TRIGGER clusters_generation AFTER INSERT OR UPDATE OR DELETE ON clusters
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_bump_status_generation();
CREATE TRIGGER drift_events_generation AFTER INSERT OR UPDATE OR DELETE ON drift_events
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_bump_status_generation();
