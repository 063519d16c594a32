package understand

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/genimage"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
	"github.com/pacsflow/pacsflow/pkg/storage/storagetest"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// fakeModel stands in for the network: the nodule probability of an image
// is its mean value, the effusion probability one minus that, so a test
// sets a finding by the brightness of an image.
type fakeModel struct {
	contract *model.Contract
	fail     atomic.Bool
	mu       sync.Mutex
	batches  []int
}

func newFakeModel() *fakeModel {
	return &fakeModel{contract: &model.Contract{
		ContractVersion: "1",
		Model:           model.ModelInfo{Name: "fake", Version: "1", IntendedUse: "tests only"},
		Labels:          []string{"nodule", "effusion"},
		Preprocessing: model.Preprocessing{ImageSize: [2]int{8, 8}, Channels: 1, ValueRange: [2]float64{0, 1},
			Window: model.Window{Center: 2048, Width: 4096}, AcceptedModalities: []string{"CR", "DX"}},
		Signatures: map[string]model.SignatureDef{model.SigUnderstand: {}, model.SigAsk: {}},
	}}
}

func (f *fakeModel) Contract() *model.Contract { return f.contract }

func (f *fakeModel) Understand(_ context.Context, images []model.Image) ([]model.Understanding, error) {
	if f.fail.Load() {
		return nil, errors.New("the model failed")
	}
	f.mu.Lock()
	f.batches = append(f.batches, len(images))
	f.mu.Unlock()
	out := make([]model.Understanding, len(images))
	for i, im := range images {
		m := mean(im)
		out[i] = model.Understanding{
			Findings: []model.Finding{
				{Label: "nodule", Probability: m, Box: [4]float32{0.1, 0.2, 0.3, 0.4}},
				{Label: "effusion", Probability: 1 - m, Box: [4]float32{0.5, 0.5, 0.9, 0.9}},
			},
			Report: fmt.Sprintf("mean %.2f", m),
		}
	}
	return out, nil
}

func (f *fakeModel) Ask(_ context.Context, images []model.Image, questions []string) ([]string, error) {
	return []string{fmt.Sprintf("%s: mean %.2f", questions[0], mean(images[0]))}, nil
}

func mean(im model.Image) float32 {
	var s float32
	for _, v := range im.Pixels {
		s += v
	}
	return s / float32(len(im.Pixels))
}

// objects is an in-memory store.
type objects = storagetest.Objects

// study builds the manifest of a study event and stores its instances.
type study struct {
	uid    string
	series []events.SeriesManifest
	store  objects
}

func newStudy(store objects) *study { return &study{uid: uid.New(), store: store} }

// add stores a 16×16 instance of one grey level (0..4095) in a new
// series; "" for modality leaves the instance without pixels the fake
// decodes (garbage bytes).
func (s *study) add(modality string, values ...int) []string {
	series := fmt.Sprintf("%s.%d", s.uid, len(s.series)+1)
	m := events.SeriesManifest{SeriesInstanceUID: series, Modality: modality}
	var sops []string
	for i, v := range values {
		in := dicomtest.Instance{
			SOPClassUID: "1.2.840.10008.5.1.4.1.1.1", SOPInstanceUID: fmt.Sprintf("%s.%d", series, i+1),
			StudyInstanceUID: s.uid, SeriesInstanceUID: series, Modality: modality, InstanceNumber: i + 1,
			Image: &dicomtest.Image{Rows: 16, Cols: 16, BitsStored: 12, Photometric: "MONOCHROME2", Values: fill(256, uint16(v))},
		}
		b := in.Part10()
		if v < 0 {
			b = []byte("not DICOM at all")
		}
		key := in.SOPInstanceUID + ".v1"
		s.store[key] = b
		m.Instances = append(m.Instances, events.InstanceRef{SOPInstanceUID: in.SOPInstanceUID, SOPClassUID: in.SOPClassUID,
			TransferSyntaxUID: uid.ExplicitVRLittleEndian, Object: events.StoredObject{Backend: "fs", Key: key, Size: int64(len(b)), SHA256: strings.Repeat("0", 64)}})
		sops = append(sops, in.SOPInstanceUID)
	}
	m.NumInstances = len(m.Instances)
	s.series = append(s.series, m)
	return sops
}

func fill(n int, v uint16) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// event is the study event of generation gen listing the series from
// index from on.
func (s *study) event(gen, from int, priority string) *events.Event {
	mods := map[string]bool{}
	for _, se := range s.series {
		mods[se.Modality] = true
	}
	var modalities []string
	for m := range mods {
		modalities = append(modalities, m)
	}
	typ, root := events.TypeStudyReceived, events.SubjectStudyReceived
	if gen > 1 {
		typ, root = events.TypeStudyUpdated, events.SubjectStudyUpdated
	}
	now := time.Now()
	return &events.Event{
		ID: fmt.Sprintf("study/%s/%d", s.uid, gen), Type: typ, Subject: s.uid, Time: now,
		NATSSubject: events.StudySubject(root, modalities, "PACSFLOW"),
		Data: &events.StudyReceived{
			Study: events.Study{StudyInstanceUID: s.uid, RequestedProcedurePriority: priority}, Modalities: modalities,
			Series: s.series[from:], CallingAEs: []string{"SCU"}, CalledAEs: []string{"PACSFLOW"}, Associations: []string{"a"},
			FirstReceivedAt: now.Add(-3 * time.Second), LastReceivedAt: now, Trigger: events.TriggerQuietPeriod, Generation: gen,
		},
	}
}

type fixture struct {
	t     *testing.T
	srv   *natstest.Server
	model *fakeModel
	store objects
	svc   *Service
	reg   *prometheus.Registry
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.Start(t, natsserver.Config{}), model: newFakeModel(), store: objects{}, reg: prometheus.NewRegistry()}
	ctx := context.Background()
	if _, err := events.Provision(ctx, f.srv.JS, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	cfg.Model, cfg.Objects, cfg.Registerer = f.model, f.store, f.reg
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	var err error
	if f.svc, err = New(ctx, f.srv.JS, cfg); err != nil {
		t.Fatal(err)
	}
	return f
}

// run runs the service until the test ends.
func (f *fixture) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(ctx) }()
	f.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("Run: %v", err)
		}
	})
}

func (f *fixture) publish(e *events.Event) {
	f.t.Helper()
	if _, err := events.NewPublisher(f.srv.JS, "test").Publish(context.Background(), e); err != nil {
		f.t.Fatal(err)
	}
}

// results waits until the stream holds n triage events, and returns every
// ai.> message, checked against the event contract.
func (f *fixture) results(n int) []*jetstream.RawStreamMsg {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		msgs := f.aiMessages()
		triages := 0
		for _, m := range msgs {
			if m.Header.Get(events.HeaderType) == events.TypeAITriage {
				triages++
			}
		}
		if triages >= n {
			for _, m := range msgs {
				if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
					f.t.Errorf("%s: %v", m.Subject, err)
				}
			}
			return msgs
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%d triage events after 20 s, want %d", triages, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) aiMessages() []*jetstream.RawStreamMsg {
	f.t.Helper()
	return natstest.Messages(f.t, f.srv.JS, "PACSFLOW", "ai.")
}

func ofType[T any](t *testing.T, msgs []*jetstream.RawStreamMsg, typ, study string) []*T {
	t.Helper()
	var out []*T
	for _, m := range msgs {
		if m.Header.Get(events.HeaderType) != typ || m.Header.Get(events.HeaderSubject) != study {
			continue
		}
		v := new(T)
		if err := json.Unmarshal(m.Data, v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func TestStudyResults(t *testing.T) {
	f := newFixture(t, Config{})
	f.run()
	s := newStudy(f.store)
	cr := s.add("CR", 1000, 3500)
	ct := s.add("CT", 2000)
	bad := s.add("DX", -1)
	f.publish(s.event(1, 0, ""))
	msgs := f.results(1)

	fs := ofType[events.AIFindings](t, msgs, events.TypeAIFindings, s.uid)
	if len(fs) != 1 {
		t.Fatalf("%d findings events, want 1", len(fs))
	}
	got := fs[0]
	if got.NumImages != 2 || len(got.Skipped) != 2 {
		t.Errorf("analyzed %d images, skipped %+v; want 2 and the CT and the undecodable DX", got.NumImages, got.Skipped)
	}
	reasons := map[string]string{}
	for _, sk := range got.Skipped {
		reasons[sk.SOPInstanceUID] = sk.Reason
	}
	if !strings.Contains(reasons[ct[0]], "modality CT is not one the model accepts (CR, DX)") {
		t.Errorf("CT skipped for %q", reasons[ct[0]])
	}
	if !strings.Contains(reasons[bad[0]], "file meta information") {
		t.Errorf("undecodable DX skipped for %q", reasons[bad[0]])
	}
	// The nodule is the bright image's (3500/4095 ≈ 0.85), the effusion the dark one's.
	want := map[string]string{"nodule": cr[1], "effusion": cr[0]}
	for _, fi := range got.Findings {
		if fi.SOPInstanceUID != want[fi.Label] || fi.Frame != 1 || len(fi.Box) != 4 {
			t.Errorf("finding %+v: want image %s, frame 1, a box", fi, want[fi.Label])
		}
		if fi.Present != (fi.Probability >= 0.5) {
			t.Errorf("finding %+v: present should be probability ≥ 0.5", fi)
		}
	}
	rd := ofType[events.AIReportDraft](t, msgs, events.TypeAIReportDraft, s.uid)
	if len(rd) != 1 || rd[0].SOPInstanceUID != cr[1] || !rd[0].MachineGenerated || !strings.HasPrefix(rd[0].Text, "mean 0.8") {
		t.Errorf("report drafts %+v: want one about %s", rd, cr[1])
	}
	tr := ofType[events.AITriage](t, msgs, events.TypeAITriage, s.uid)
	if len(tr) != 1 || tr[0].Level != "URGENT" || !strings.Contains(tr[0].Reason, "nodule 0.8") {
		t.Errorf("triage %+v: want URGENT for the nodule", tr)
	}
	for _, m := range msgs {
		if m.Header.Get(events.HeaderType) == events.TypeAITriage && !strings.HasPrefix(m.Subject, "ai.triage.URGENT.") {
			t.Errorf("triage published on %s", m.Subject)
		}
	}
}

// A study event handled twice (a redelivery after a crash, another
// replica) publishes the same events, which JetStream stores once.
func TestStudyEventHandledTwice(t *testing.T) {
	f := newFixture(t, Config{})
	s := newStudy(f.store)
	s.add("CR", 3000)
	ev := s.event(1, 0, "")
	f.publish(ev)
	f.run()
	f.results(1)
	again := *ev
	again.ID += "-again" // not a JetStream duplicate: handled a second time
	f.publish(&again)
	waitCounter(t, f.reg, "pacsflow_understand_studies_total", "republished", 1)
	if n := len(f.aiMessages()); n != 3 {
		t.Errorf("%d ai events after handling the study twice, want 3", n)
	}
}

// A pacs.study.updated result supersedes the first: it covers the whole
// study, the new instances and the earlier ones.
func TestStudyUpdated(t *testing.T) {
	f := newFixture(t, Config{})
	f.run()
	s := newStudy(f.store)
	first := s.add("CR", 500)
	f.publish(s.event(1, 0, ""))
	f.results(1)
	late := s.add("DX", 3900)
	f.publish(s.event(2, 1, "STAT"))
	msgs := f.results(2)
	fs := ofType[events.AIFindings](t, msgs, events.TypeAIFindings, s.uid)
	if len(fs) != 2 || fs[1].Generation != 2 || fs[1].NumImages != 2 {
		t.Fatalf("findings %+v: want generation 2 covering both images", fs)
	}
	by := map[string]string{}
	for _, fi := range fs[1].Findings {
		by[fi.Label] = fi.SOPInstanceUID
	}
	if by["nodule"] != late[0] || by["effusion"] != first[0] {
		t.Errorf("generation 2 findings %+v: nodule should be the late image's, effusion the first's", fs[1].Findings)
	}
	tr := ofType[events.AITriage](t, msgs, events.TypeAITriage, s.uid)
	if tr[1].Level != "STAT" || !strings.Contains(tr[1].Reason, "requested procedure priority STAT") {
		t.Errorf("generation 2 triage %+v: want STAT (nodule 0.95 and the DICOM priority)", tr[1])
	}
}

// A generation that arrives before the previous one's analysis waits for
// it, but not forever.
func TestUpdatedBeforePrevious(t *testing.T) {
	f := newFixture(t, Config{})
	f.run() // for its batcher: the event is handed to the handler here
	s := newStudy(f.store)
	s.add("CR", 500)
	s.add("CR", 600)
	ev := s.event(2, 1, "")
	ev.Source = "test"
	msg, err := ev.Message()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := events.Decode(msg.Subject, msg.Header, msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := f.svc.handle(ctx, &events.Delivery{Event: rec, Deliveries: 1}); err == nil || !strings.Contains(err.Error(), "generation 1 is not done yet") {
		t.Errorf("first delivery: %v, want a retry for the missing generation 1", err)
	}
	if err := f.svc.handle(ctx, &events.Delivery{Event: rec, Deliveries: waitForPrevious}); err != nil {
		t.Fatalf("delivery %d: %v", waitForPrevious, err)
	}
	fs := ofType[events.AIFindings](t, f.aiMessages(), events.TypeAIFindings, s.uid)
	if len(fs) != 1 || fs[0].NumImages != 1 || fs[0].Generation != 2 {
		t.Errorf("findings %+v: want generation 2 of the one image it lists", fs)
	}
}

// A model that fails sends the study to the dead letters, with the error,
// after MaxDeliver attempts; nothing is published for it.
func TestModelFailureDeadLetters(t *testing.T) {
	f := newFixture(t, Config{MaxDeliver: 2})
	f.model.fail.Store(true)
	s := newStudy(f.store)
	s.add("CR", 1000)
	f.publish(s.event(1, 0, ""))
	f.run()
	ctx := context.Background()
	var dl *jetstream.RawStreamMsg
	waitFor(t, "the dead letter", func() bool {
		st, err := f.srv.JS.Stream(ctx, events.StreamConfig{}.DeadLetterStream())
		if err != nil {
			return false
		}
		dl, err = st.GetLastMsgForSubject(ctx, "dlq.understand.>")
		return err == nil
	})
	if r := dl.Header.Get(events.HeaderDLQError); !strings.Contains(r, "the model failed") {
		t.Errorf("dead letter reason %q", r)
	}
	if n := len(f.aiMessages()); n != 0 {
		t.Errorf("%d ai events for a failed study", n)
	}
}

// Studies of modalities the model does not take get no results.
func TestNotApplicable(t *testing.T) {
	f := newFixture(t, Config{})
	f.run()
	s := newStudy(f.store)
	s.add("CT", 100)
	f.publish(s.event(1, 0, ""))
	waitCounter(t, f.reg, "pacsflow_understand_studies_total", "not_applicable", 1)
	if n := len(f.aiMessages()); n != 0 {
		t.Errorf("%d ai events for a CT study", n)
	}
}

// Images of several studies share the model's batches: with a batch of
// 12 and a long wait, the first batch runs once the 3 images of each of 4
// studies in flight are queued.
func TestBatchesAcrossStudies(t *testing.T) {
	f := newFixture(t, Config{Studies: 4, Batch: batch.Config{MaxSize: 12, MaxWait: time.Minute}})
	for range 4 {
		s := newStudy(f.store)
		s.add("CR", 100, 200, 300)
		f.publish(s.event(1, 0, ""))
	}
	f.run()
	f.results(4)
	f.model.mu.Lock()
	defer f.model.mu.Unlock()
	if len(f.model.batches) != 1 || f.model.batches[0] != 12 {
		t.Errorf("batches %v, want one of 12 images from 4 studies", f.model.batches)
	}
}

func TestAsk(t *testing.T) {
	f := newFixture(t, Config{})
	f.run()
	s := newStudy(f.store)
	cr := s.add("CR", 1000, 3500)
	f.publish(s.event(1, 0, ""))
	f.results(1)
	for _, tt := range []struct {
		name, body, code, answer string
	}{
		{"answered", fmt.Sprintf(`{"study_instance_uid":%q,"question":"is there a nodule?"}`, s.uid), "", "is there a nodule?: mean 0.85"},
		{"unknown study", `{"study_instance_uid":"1.2.3","question":"is there a nodule?"}`, "404", ""},
		{"no question", fmt.Sprintf(`{"study_instance_uid":%q}`, s.uid), "400", ""},
		{"not JSON", `is there a nodule?`, "400", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := f.srv.Conn.Request(events.SubjectAIAsk, []byte(tt.body), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if code := m.Header.Get(micro.ErrorCodeHeader); code != tt.code {
				t.Fatalf("error code %q (%s), want %q", code, m.Header.Get(micro.ErrorHeader), tt.code)
			}
			if tt.code != "" {
				return
			}
			var r events.AskReply
			if err := json.Unmarshal(m.Data, &r); err != nil {
				t.Fatal(err)
			}
			if r.Answer != tt.answer || r.SOPInstanceUID != cr[1] || !r.MachineGenerated || r.Model.Name != "fake" {
				t.Errorf("reply %+v", r)
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 20 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitCounter(t *testing.T, reg *prometheus.Registry, name, outcome string, want float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s{outcome=%q} = %v", name, outcome, want), func() bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "outcome" && l.GetValue() == outcome && m.GetCounter().GetValue() >= want {
						return true
					}
				}
			}
		}
		return false
	})
}

// A study of generated (synthetic) images sent back in gets no result: it
// never reaches a triage or a worklist, whatever modality the model takes.
func TestSyntheticStudyHasNoResult(t *testing.T) {
	f := newFixture(t, Config{})
	f.svc.accepted["OT"] = true // a model that would take secondary captures
	f.run()
	obj, err := genimage.Write(nil, genimage.Image{Rows: 8, Cols: 8, Values: make([]float32, 64)},
		genimage.Params{RequestID: "req-1", Task: "synthesize", Count: 1, ModelName: "m", ModelVersion: "1", Time: time.Unix(0, 0).UTC()}, genimage.Config{})
	if err != nil {
		t.Fatal(err)
	}
	key := obj.SOPInstanceUID + ".v1"
	f.store[key] = obj.Part10
	s := &study{uid: obj.StudyInstanceUID, store: f.store, series: []events.SeriesManifest{{
		SeriesInstanceUID: obj.SeriesInstanceUID, Modality: "OT", NumInstances: 1,
		Instances: []events.InstanceRef{{SOPInstanceUID: obj.SOPInstanceUID, SOPClassUID: "1.2.840.10008.5.1.4.1.1.7.3", TransferSyntaxUID: uid.ExplicitVRLittleEndian,
			Object: events.StoredObject{Backend: "fs", Key: key, Size: int64(len(obj.Part10)), SHA256: strings.Repeat("0", 64)}}},
	}}}
	f.publish(s.event(1, 0, ""))
	waitCounter(t, f.reg, "pacsflow_understand_studies_total", "synthetic", 1)
	if n := len(f.aiMessages()); n != 0 {
		t.Errorf("%d ai events for a study of synthetic images", n)
	}
}
