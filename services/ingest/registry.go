package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// registry records, per SOP Instance UID, the versions stored and whether
// their events are published. It makes re-sending idempotent beyond
// JetStream's duplicate window (identical bytes are a duplicate), orders
// versions (different bytes are a new version that says what it replaces),
// and keeps the object of any version whose event may exist: a version is
// reserved before its event is published and confirmed after, so a failed
// or interrupted publish leaves a pending version that a re-send finishes.
type registry struct {
	kv jetstream.KeyValue
}

// instanceRecord is the value kept per SOP Instance UID.
type instanceRecord struct {
	StudyInstanceUID  string          `json:"study_instance_uid"`
	SeriesInstanceUID string          `json:"series_instance_uid"`
	Versions          []storedVersion `json:"versions"`
}

type storedVersion struct {
	SHA256   string    `json:"sha256"`
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	StoredAt time.Time `json:"stored_at"`
	// Replaces is the digest of the version before this one, if any.
	Replaces string `json:"replaces,omitempty"`
	// Published is set once JetStream acknowledged the version's event.
	Published bool `json:"published"`
}

func (rec *instanceRecord) find(sha string) int {
	for i, v := range rec.Versions {
		if v.SHA256 == sha {
			return i
		}
	}
	return -1
}

// reservation is a version as the registry holds it, with the revision of
// the record it was read from or written to.
type reservation struct {
	storedVersion
	rec instanceRecord
	rev uint64
}

// reserve records v as a pending version of sop, filling in what it
// replaces. If a version with v's digest is already recorded, that one is
// returned instead, with existing set.
func (r *registry) reserve(ctx context.Context, sop, study, series string, v storedVersion) (res reservation, existing bool, err error) {
	rec := instanceRecord{StudyInstanceUID: study, SeriesInstanceUID: series, Versions: []storedVersion{v}}
	b, err := json.Marshal(&rec)
	if err != nil {
		return reservation{}, false, err
	}
	// Most instances are new: one round trip.
	rev, err := r.kv.Create(ctx, sop, b)
	if err == nil {
		return reservation{storedVersion: v, rec: rec, rev: rev}, false, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return reservation{}, false, fmt.Errorf("reserve instance %s: %w", sop, err)
	}
	for attempt := 0; attempt < 16; attempt++ {
		rec, rev, err := r.read(ctx, sop)
		if err != nil {
			return reservation{}, false, err
		}
		if i := rec.find(v.SHA256); i >= 0 {
			return reservation{storedVersion: rec.Versions[i], rec: rec, rev: rev}, true, nil
		}
		nv := v
		if n := len(rec.Versions); n > 0 {
			nv.Replaces = rec.Versions[n-1].SHA256
		}
		rec.Versions = append(rec.Versions, nv)
		if rev, err = r.write(ctx, sop, &rec, rev); err == nil {
			return reservation{storedVersion: nv, rec: rec, rev: rev}, false, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return reservation{}, false, fmt.Errorf("reserve instance %s: %w", sop, err)
		}
	}
	return reservation{}, false, fmt.Errorf("reserve instance %s: too many concurrent writers", sop)
}

// update changes the version with res's digest through change, starting
// from the record res was read from and re-reading on conflicts.
func (r *registry) update(ctx context.Context, sop string, res reservation, change func(*storedVersion)) error {
	rec, rev := res.rec, res.rev
	for attempt := 0; attempt < 16; attempt++ {
		i := rec.find(res.SHA256)
		if i < 0 {
			return fmt.Errorf("update instance %s: version %s is not recorded", sop, res.SHA256)
		}
		change(&rec.Versions[i])
		_, err := r.write(ctx, sop, &rec, rev)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("update instance %s: %w", sop, err)
		}
		if rec, rev, err = r.read(ctx, sop); err != nil {
			return err
		}
	}
	return fmt.Errorf("update instance %s: too many concurrent writers", sop)
}

func (r *registry) read(ctx context.Context, sop string) (instanceRecord, uint64, error) {
	var rec instanceRecord
	e, err := r.kv.Get(ctx, sop)
	if err != nil {
		return rec, 0, fmt.Errorf("read instance record %s: %w", sop, err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return rec, 0, fmt.Errorf("instance record %s: %w", sop, err)
	}
	return rec, e.Revision(), nil
}

func (r *registry) write(ctx context.Context, sop string, rec *instanceRecord, rev uint64) (uint64, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	return r.kv.Update(ctx, sop, b, rev)
}
