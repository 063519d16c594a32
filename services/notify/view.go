package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// update is a change of the worklist as the live stream sends it: an entry
// that is new or changed, or the Study Instance UID of one removed.
type update struct {
	entry   *Entry
	removed string
}

// subscriberBuffer is how many updates a slow client may fall behind
// before it is dropped; it reconnects and reads the list again.
const subscriberBuffer = 256

// view is this replica's copy of the worklist bucket, kept by a watch: the
// API reads it, and its subscribers (the live streams) get every change,
// whichever replica wrote it.
type view struct {
	maxAge time.Duration
	now    func() time.Time
	m      *metrics

	mu      sync.RWMutex
	entries map[string]*Entry
	subs    map[chan update]struct{}
	ready   chan struct{}
}

func newView(maxAge time.Duration, now func() time.Time, m *metrics) *view {
	return &view{maxAge: maxAge, now: now, m: m, entries: map[string]*Entry{}, subs: map[chan update]struct{}{}, ready: make(chan struct{})}
}

// run follows the bucket until ctx ends. The watch delivers every current
// entry first, then each change.
func (v *view) run(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", kv.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	sweep := time.NewTicker(time.Minute)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			v.expire()
		case kve, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("the watch of the worklist ended")
			}
			if kve == nil { // every current entry has been delivered
				v.markLoaded()
				continue
			}
			v.apply(kve)
		}
	}
}

func (v *view) markLoaded() {
	select {
	case <-v.ready:
	default:
		close(v.ready)
	}
}

func (v *view) loaded() bool {
	select {
	case <-v.ready:
		return true
	default:
		return false
	}
}

func (v *view) apply(kve jetstream.KeyValueEntry) {
	if kve.Operation() != jetstream.KeyValuePut {
		v.remove(kve.Key())
		return
	}
	var e Entry
	if err := json.Unmarshal(kve.Value(), &e); err != nil {
		return // not an entry this version wrote: nothing to show
	}
	e.Revision = kve.Revision()
	v.mu.Lock()
	defer v.mu.Unlock()
	if old := v.entries[e.StudyInstanceUID]; old != nil {
		if old.Revision >= e.Revision {
			return
		}
		v.m.entries.WithLabelValues(old.Level, old.Status).Dec()
	}
	v.entries[e.StudyInstanceUID] = &e
	v.m.entries.WithLabelValues(e.Level, e.Status).Inc()
	v.publish(update{entry: &e})
}

func (v *view) remove(uid string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.entries[uid]
	if old == nil {
		return
	}
	delete(v.entries, uid)
	v.m.entries.WithLabelValues(old.Level, old.Status).Dec()
	v.publish(update{removed: uid})
}

// expire forgets the entries the bucket's TTL removed: expiry leaves no
// marker for the watch to see.
func (v *view) expire() {
	if v.maxAge <= 0 {
		return
	}
	cutoff := v.now().Add(-v.maxAge)
	v.mu.RLock()
	var old []string
	for uid, e := range v.entries {
		if e.UpdatedAt.Before(cutoff) {
			old = append(old, uid)
		}
	}
	v.mu.RUnlock()
	for _, uid := range old {
		v.remove(uid)
	}
}

// publish sends u to every subscriber; one that cannot keep up is closed.
// Called with mu held.
func (v *view) publish(u update) {
	for ch := range v.subs {
		select {
		case ch <- u:
		default:
			delete(v.subs, ch)
			close(ch)
		}
	}
}

// subscribe returns a channel of the changes from now on, closed when the
// subscriber falls behind; cancel ends the subscription.
func (v *view) subscribe() (updates <-chan update, cancel func()) {
	ch := make(chan update, subscriberBuffer)
	v.mu.Lock()
	v.subs[ch] = struct{}{}
	v.mu.Unlock()
	v.m.clients.Inc()
	return ch, func() {
		v.mu.Lock()
		if _, ok := v.subs[ch]; ok {
			delete(v.subs, ch)
			close(ch)
		}
		v.mu.Unlock()
		v.m.clients.Dec()
	}
}

// get returns a study's entry, nil when it is not listed.
func (v *view) get(uid string) *Entry {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.entries[uid]
}

// Filter selects worklist entries; empty fields select everything.
type Filter struct {
	Levels, Statuses, Modalities []string
	// Text matches patient name and ID, accession number, study
	// description and Study Instance UID, case-insensitively.
	Text string
}

// list returns the entries f selects in worklist order, from offset, at
// most limit of them, and how many f selects in all. Entries are shared:
// callers do not change them.
func (v *view) list(f Filter, offset, limit int) ([]*Entry, int) {
	v.mu.RLock()
	out := make([]*Entry, 0, len(v.entries))
	for _, e := range v.entries {
		if f.match(e) {
			out = append(out, e)
		}
	}
	v.mu.RUnlock()
	slices.SortFunc(out, compareEntries)
	total := len(out)
	offset = min(max(offset, 0), total)
	return out[offset:min(offset+limit, total)], total
}
