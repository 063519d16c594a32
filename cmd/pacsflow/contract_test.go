package main_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
)

// TestUpEventsFollowTheContract: every event of a `pacsflow up` run fed by
// DCMTK's storescu, headers and data, follows the contract
// (events.ValidateMessage, which holds the data to its JSON Schema in
// schemas/), for each storage backend. The run receives a study, then a
// late instance and one re-sent with other bytes (a study update with a
// new version), then real images of six studies, in several SOP classes
// and transfer syntaxes, with the attributes real modalities write.
func TestUpEventsFollowTheContract(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	for _, backend := range []string{"objectstore", "fs"} {
		t.Run(backend, func(t *testing.T) { testUpEventsFollowTheContract(t, bin, backend) })
	}
}

func testUpEventsFollowTheContract(t *testing.T, bin, backend string) {
	up := startPipeline(t, bin, upArgs(t.TempDir(), backend)...)
	js := connectJS(t, up.natsURL)

	ins := dicomtest.Study(2, 3, 4000)
	ins[0].Priority = "STAT"
	storeSCU(t, up.dicomAddr, writeInstances(t, ins)).mustSucceed(t)
	waitEvents(t, js, "pacs.study.received", countType(events.TypeStudyReceived, 1))

	late := dicomtest.Study(1, 1, 1000)[0]
	late.StudyInstanceUID, late.SeriesInstanceUID = ins[0].StudyInstanceUID, ins[0].SeriesInstanceUID
	late.SOPInstanceUID = ins[0].SeriesInstanceUID + ".99"
	changed := ins[1]
	changed.Salt = 1
	storeSCU(t, up.dicomAddr, writeInstances(t, []dicomtest.Instance{late, changed})).mustSucceed(t)
	waitEvents(t, js, "pacs.study.updated", countType(events.TypeStudyUpdated, 1))

	samples := samplePaths(t)
	storeSCU(t, up.dicomAddr, samples).mustSucceed(t)
	waitEvents(t, js, "the studies of the samples", countType(events.TypeStudyReceived, 1+len(samples)))

	seen := map[string]int{}
	for _, m := range rawEvents(t, js, "PACSFLOW") {
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

	// The de-identified projection of the same run, on its own stream:
	// one analytics event per event, each following its contract.
	waitFor(t, "the analytics projection", func() bool {
		return len(rawEvents(t, js, events.AnalyticsStreamName)) == seen[events.TypeInstanceStored]+seen[events.TypeStudyReceived]+seen[events.TypeStudyUpdated]
	})
	for _, m := range rawEvents(t, js, events.AnalyticsStreamName) {
		if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
			t.Errorf("analytics stream sequence %d: %v\ndata: %s", m.Sequence, err, m.Data)
		}
	}
	up.interrupt(t)
}

// rawEvents returns every message of a stream, headers and all, in order.
func rawEvents(t *testing.T, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
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
			t.Fatalf("event %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}
