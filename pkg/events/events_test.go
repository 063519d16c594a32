package events

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
)

func TestToken(t *testing.T) {
	for in, want := range map[string]string{
		"CT": "CT", "": "_", "MY AE": "MY_AE", "a.b": "a_b", "x*>": "x__", "CT+SR": "CT+SR", "ü": "__",
	} {
		if got := Token(in); got != want {
			t.Errorf("Token(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSubjects(t *testing.T) {
	if got := InstanceStoredSubject("CT", "ARCHIVE 1"); got != "pacs.instance.stored.CT.ARCHIVE_1" {
		t.Errorf("instance subject %q", got)
	}
	if got := StudySubject(SubjectStudyReceived, []string{"SR", "CT"}, "PACS"); got != "pacs.study.received.CT+SR.PACS" {
		t.Errorf("study subject %q", got)
	}
	if got := StudySubject(SubjectStudyUpdated, nil, ""); got != "pacs.study.updated._._" {
		t.Errorf("study subject without modalities %q", got)
	}
}

func TestMessageRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 27, 8, 30, 0, 123456789, time.UTC)
	e := &Event{ID: "instance/1.2.3/ab", Type: TypeInstanceStored, Source: "pacsflow/ingest/h", Subject: "1.2.3", Time: at,
		NATSSubject: "pacs.instance.stored.CT.PACS", Data: &InstanceStored{SOPInstanceUID: "1.2.3.4"}}
	m, err := e.Message()
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(nats.MsgIdHdr) != e.ID || m.Header.Get("ce-specversion") != "1.0" || m.Header.Get("content-type") != "application/json" {
		t.Fatalf("headers %v", m.Header)
	}
	r, err := Decode(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != e.ID || r.Type != e.Type || r.Source != e.Source || r.Subject != e.Subject || !r.Time.Equal(at) {
		t.Fatalf("decoded %+v", r)
	}
	var d InstanceStored
	if err := json.Unmarshal(r.Data, &d); err != nil || d.SOPInstanceUID != "1.2.3.4" {
		t.Fatalf("data %s: %v", r.Data, err)
	}
	if _, err := (&Event{Type: TypeInstanceStored}).Message(); err == nil {
		t.Error("an event without ID encoded")
	}
	if _, err := Decode("x", nats.Header{}, nil); err == nil {
		t.Error("a message without CloudEvents headers decoded")
	}
}

// startServer runs an embedded JetStream for one test.
func startServer(t *testing.T) jetstream.JetStream {
	t.Helper()
	return natstest.Start(t, natsserver.Config{}).JS
}

func TestProvisionAndPublish(t *testing.T) {
	js := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := StreamConfig{MaxAge: 24 * time.Hour}
	for range 2 { // idempotent
		if _, err := Provision(ctx, js, cfg); err != nil {
			t.Fatal(err)
		}
	}
	st, err := Provision(ctx, js, StreamConfig{MaxAge: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.Config.MaxAge != 48*time.Hour || info.Config.Duplicates != 2*time.Minute {
		t.Fatalf("stream config after update: %+v %v", info.Config, err)
	}
	p := NewPublisher(js, "test")
	e := &Event{ID: "study/1.2/1", Type: TypeStudyReceived, Subject: "1.2", NATSSubject: "pacs.study.received.CT.X", Data: &StudyReceived{Generation: 1}}
	if dup, err := p.Publish(ctx, e); err != nil || dup {
		t.Fatalf("first publish: dup=%v %v", dup, err)
	}
	if dup, err := p.Publish(ctx, e); err != nil || !dup {
		t.Fatalf("second publish of the same ID: dup=%v %v; want a duplicate", dup, err)
	}
	info, _ = st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("%d messages stored, want 1", info.State.Msgs)
	}
	m, err := st.GetLastMsgForSubject(ctx, "pacs.study.received.>")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Decode(m.Subject, m.Header, m.Data)
	if err != nil || r.Source != "test" || r.Time.IsZero() {
		t.Fatalf("stored event %+v %v", r, err)
	}
	if _, err := p.Publish(ctx, &Event{ID: "x", Type: "t", NATSSubject: "elsewhere.x", Data: 1}); err == nil {
		t.Fatal("publish to a subject outside the stream was acknowledged")
	}
}
