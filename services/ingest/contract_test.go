package ingest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
)

// TestEventsFollowTheContract: every event that ingest publishes, headers
// and data, follows the contract (events.ValidateMessage, which holds the
// data to its JSON Schema in schemas/). The studies make each type of event
// and each shape of data the pipeline can produce: a full study, reported
// after the quiet period; a late instance and one re-sent with other bytes,
// reported in an update with a new version (replaces_sha256); a study
// without any optional attribute (empty modalities, optional properties
// left out); and a study reported at the maximum wait while its
// association is still open.
func TestEventsFollowTheContract(t *testing.T) {
	const maxWait = 2 * time.Second
	b := newBroker(t)
	evs := watchEvents(t, b)
	r := startReplica(t, b, replicaOpts{cfg: Config{MaxWait: maxWait}})
	count := func(typ string) func() bool {
		n := len(evs.ofType(typ))
		return func() bool { return len(evs.ofType(typ)) > n }
	}

	full := dicomtest.Study(2, 3, 2000)
	full[0].Priority = "STAT"
	received := count(events.TypeStudyReceived)
	allSuccess(t, send(t, r.addr, full))
	waitFor(t, "the full study", received)

	late := dicomtest.Study(1, 1, 1000)[0]
	late.StudyInstanceUID, late.SeriesInstanceUID = full[0].StudyInstanceUID, full[3].SeriesInstanceUID
	late.SOPInstanceUID = late.SeriesInstanceUID + ".99"
	changed := full[1]
	changed.Salt = 1
	updated := count(events.TypeStudyUpdated)
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{late, changed}))
	waitFor(t, "the study update", updated)

	bare := dicomtest.Study(1, 1, 500)[0]
	bare.Modality, bare.PatientID, bare.PatientName, bare.AccessionNumber, bare.StudyDescription = "", "", "", "", ""
	bare.SeriesNumber, bare.InstanceNumber = 0, 0
	received = count(events.TypeStudyReceived)
	allSuccess(t, send(t, r.addr, []dicomtest.Instance{bare}))
	waitFor(t, "the study without optional attributes", received)

	open := dicomtest.Study(1, 1, 500)[0]
	c, err := dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	received = count(events.TypeStudyReceived)
	if res, err := storeOne(c, open); err != nil || !res.Status.IsSuccess() {
		t.Fatalf("store over the open association: %v %v", res.Status, err)
	}
	waitFor(t, "the study reported at the maximum wait", received)
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if s := study(t, evs.ofType(events.TypeStudyReceived)[2]); s.Trigger != "max-wait" {
		t.Errorf("the study of the open association was reported by %q, want max-wait", s.Trigger)
	}

	seen := map[string]int{}
	for _, m := range streamMessages(t, b) {
		if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
			t.Errorf("stream sequence %d: %v\ndata: %s", m.Sequence, err, m.Data)
		}
		seen[m.Header.Get(events.HeaderType)]++
	}
	// The types ingest publishes; the analytics projection is another
	// service's.
	for _, typ := range []string{events.TypeInstanceStored, events.TypeStudyReceived, events.TypeStudyUpdated} {
		if seen[typ] == 0 {
			t.Errorf("no %s event: the test no longer covers every type that ingest publishes", typ)
		}
	}
	t.Logf("events checked, by type: %v", seen)
}

// streamMessages reads every message of the event stream, headers and
// all, straight from JetStream.
func streamMessages(t *testing.T, b *broker) []*jetstream.RawStreamMsg {
	t.Helper()
	nc, err := b.ns.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "PACSFLOW")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}
