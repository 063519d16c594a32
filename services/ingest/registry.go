package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// registry records, per SOP Instance UID, the versions stored and whose
// event JetStream has acknowledged. It makes re-sending idempotent beyond
// JetStream's duplicate window: an instance whose bytes are already
// recorded is a duplicate, and different bytes are a new version.
//
// A record is written only after the version's event is acknowledged, so a
// recorded version always has its event.
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
	EventID  string    `json:"event_id"`
}

// lookup returns what is recorded for sop, or a zero record.
func (r *registry) lookup(ctx context.Context, sop string) (instanceRecord, error) {
	var rec instanceRecord
	e, err := r.kv.Get(ctx, sop)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, nil
	}
	if err != nil {
		return rec, fmt.Errorf("look up instance %s: %w", sop, err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return rec, fmt.Errorf("instance record %s: %w", sop, err)
	}
	return rec, nil
}

// has reports the recorded version with the given digest.
func (rec *instanceRecord) has(sha string) (storedVersion, bool) {
	for _, v := range rec.Versions {
		if v.SHA256 == sha {
			return v, true
		}
	}
	return storedVersion{}, false
}

// latest is the most recently recorded version, if any.
func (rec *instanceRecord) latest() (storedVersion, bool) {
	if len(rec.Versions) == 0 {
		return storedVersion{}, false
	}
	return rec.Versions[len(rec.Versions)-1], true
}

// record adds v to the record of sop with compare-and-set, retrying on
// concurrent writers. existing is true when another writer recorded the
// same digest first; the caller's copy is then redundant.
func (r *registry) record(ctx context.Context, sop, study, series string, v storedVersion) (existing storedVersion, dup bool, err error) {
	for attempt := 0; attempt < 16; attempt++ {
		e, err := r.kv.Get(ctx, sop)
		var rec instanceRecord
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rec = instanceRecord{StudyInstanceUID: study, SeriesInstanceUID: series}
		case err != nil:
			return storedVersion{}, false, fmt.Errorf("record instance %s: %w", sop, err)
		default:
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return storedVersion{}, false, fmt.Errorf("instance record %s: %w", sop, err)
			}
			rev = e.Revision()
		}
		if prev, ok := rec.has(v.SHA256); ok {
			return prev, true, nil
		}
		rec.Versions = append(rec.Versions, v)
		b, err := json.Marshal(rec)
		if err != nil {
			return storedVersion{}, false, fmt.Errorf("record instance %s: %w", sop, err)
		}
		if rev == 0 {
			_, err = r.kv.Create(ctx, sop, b)
		} else {
			_, err = r.kv.Update(ctx, sop, b, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // another writer was first: read again
		}
		if err != nil {
			return storedVersion{}, false, fmt.Errorf("record instance %s: %w", sop, err)
		}
		return storedVersion{}, false, nil
	}
	return storedVersion{}, false, fmt.Errorf("record instance %s: too many concurrent writers", sop)
}
