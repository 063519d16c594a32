package analytics

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/deid"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
)

// Run projects a published PHI event onto the analytics stream, as a valid
// analytics event that carries none of the PHI.
func TestRunProjectsOntoTheAnalyticsStream(t *testing.T) {
	js := natstest.Start(t, natsserver.Config{}).JS
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := events.Provision(ctx, js, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	key, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "analytics.key"))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(runCtx, js, Config{Deid: deid.Config{Key: key}, Source: "test"}) }()
	defer func() { stop(); <-done }()

	data := sampleInstanceData()
	ev := &events.Event{ID: "instance/x/y", Type: events.TypeInstanceStored, Subject: data.Study.StudyInstanceUID,
		NATSSubject: events.InstanceStoredSubject(data.Modality, data.Association.CalledAE), Data: data}
	if _, err := events.NewPublisher(js, "ingest").Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	var m *jetstream.RawStreamMsg
	for m == nil {
		st, err := js.Stream(ctx, events.AnalyticsStreamName)
		if err == nil {
			m, _ = st.GetLastMsgForSubject(ctx, events.SubjectAnalyticsInstanceStored+".>")
		}
		if ctx.Err() != nil {
			t.Fatal("no analytics event within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
		t.Fatalf("analytics event does not match its schema: %v", err)
	}
	for _, phi := range []string{data.Patient.Name, data.Patient.ID, data.Study.StudyInstanceUID, data.SOPInstanceUID, data.Object.Key} {
		if bytes.Contains(m.Data, []byte(phi)) || m.Header.Get(events.HeaderSubject) == phi {
			t.Errorf("the analytics event carries %q", phi)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "analytics.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil || len(k1) != 32 {
		t.Fatalf("created key of %d bytes: %v", len(k1), err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v: %v", fi.Mode(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatal("the key changed on the second load")
	}
}
