-- Same counter as migrations/postgres/0010: moves whenever sync status rows, clusters or drift
-- events change, so `keyfleet status` can answer from a snapshot while it (and the change log)
-- stand still. SQLite has no statement-level triggers: one bump per row, in the writer's
-- transaction (microseconds each).
CREATE TABLE status_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO status_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER sync_status_generation_insert AFTER INSERT ON sync_status
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER sync_status_generation_update AFTER UPDATE ON sync_status
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER sync_status_generation_delete AFTER DELETE ON sync_status
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER clusters_generation_insert AFTER INSERT ON clusters
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER clusters_generation_update AFTER UPDATE ON clusters
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER clusters_generation_delete AFTER DELETE ON clusters
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER drift_events_generation_insert AFTER INSERT ON drift_events
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER drift_events_generation_update AFTER UPDATE ON drift_events
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER drift_events_generation_delete AFTER DELETE ON drift_events
BEGIN UPDATE status_generation SET generation = generation + 1 WHERE id = 1; END;
