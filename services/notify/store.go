package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// casAttempts bounds the compare-and-set retries of one change: each
// retry means another replica changed the same entry meanwhile, which a
// handful of events about one study can do, not dozens.
const casAttempts = 16

// errConflict is a compare-and-set that kept losing.
var errConflict = errors.New("the entry kept changing under compare-and-set")

// modify applies fn to the stored value under key (nil when there is
// none) and stores the result if it is still at the revision read, or
// reads again and retries: changes made by other replicas are never
// overwritten. fn returns the new value and whether it differs; an
// unchanged value is not written. It returns the value and revision
// stored after the change (or found, when unchanged).
func modify[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(old *T) (*T, bool, error)) (*T, uint64, bool, error) {
	for range casAttempts {
		old, rev, err := get[T](ctx, kv, key)
		if err != nil {
			return nil, 0, false, err
		}
		v, changed, err := fn(old)
		if err != nil || !changed {
			return v, rev, false, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, 0, false, fmt.Errorf("encode %s: %w", key, err)
		}
		if rev == 0 {
			rev, err = kv.Create(ctx, key, b)
		} else {
			rev, err = kv.Update(ctx, key, b, rev)
		}
		switch {
		case err == nil:
			return v, rev, true, nil
		case errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			continue // another replica was first: merge into its value
		default:
			return nil, 0, false, fmt.Errorf("store %s in %s: %w", key, kv.Bucket(), err)
		}
	}
	return nil, 0, false, fmt.Errorf("store %s in %s: %w", key, kv.Bucket(), errConflict)
}

// get reads the value under key and its revision; nil and 0 when there is
// none.
func get[T any](ctx context.Context, kv jetstream.KeyValue, key string) (*T, uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read %s from %s: %w", key, kv.Bucket(), err)
	}
	var v T
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return nil, 0, fmt.Errorf("read %s from %s: %w", key, kv.Bucket(), err)
	}
	return &v, e.Revision(), nil
}
