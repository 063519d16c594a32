package notify

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/genimage"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
	"github.com/pacsflow/pacsflow/pkg/storage/storagetest"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// objects is an in-memory store.
type objects = storagetest.Objects

type fixture struct {
	t     *testing.T
	srv   *natstest.Server
	store objects
	svc   *Service
	reg   *prometheus.Registry
	http  *httptest.Server
	stop  func()
}

// newFixture starts an embedded NATS server with the streams, and a
// service on it (see start).
func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.Start(t, natsserver.Config{}), store: objects{}}
	if _, err := events.Provision(context.Background(), f.srv.JS, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	f.start(cfg)
	return f
}

// start runs a new service, with its HTTP routes on a test server, until
// the test ends or stop is called; it waits until the worklist is loaded.
func (f *fixture) start(cfg Config) {
	t := f.t
	t.Helper()
	f.reg = prometheus.NewRegistry()
	cfg.Objects, cfg.Registerer = f.store, f.reg
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	var err error
	if f.svc, err = New(context.Background(), f.srv.JS, cfg); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	f.svc.Routes(mux)
	f.http = httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	svc, hs := f.svc, f.http
	go func() { done <- svc.Run(ctx) }()
	stopped := false
	f.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		hs.Close()
	}
	t.Cleanup(f.stop)
	waitFor(t, "the worklist loaded", func() bool { return svc.Ready(ctx) == nil })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) publish(e *events.Event) {
	f.t.Helper()
	if _, err := events.NewPublisher(f.srv.JS, "test").Publish(context.Background(), e); err != nil {
		f.t.Fatal(err)
	}
}

// getJSON GETs path from the service's routes into v and returns the
// status.
func (f *fixture) getJSON(path string, v any) int {
	f.t.Helper()
	resp, err := http.Get(f.http.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			f.t.Fatalf("GET %s: %v", path, err)
		}
	}
	return resp.StatusCode
}

func (f *fixture) list(query string) worklistPage {
	f.t.Helper()
	var p worklistPage
	if s := f.getJSON("/api/v1/worklist"+query, &p); s != http.StatusOK {
		f.t.Fatalf("GET /api/v1/worklist%s: %d", query, s)
	}
	return p
}

// waitEntry waits until the study's entry satisfies cond.
func (f *fixture) waitEntry(uid, what string, cond func(*Entry) bool) *Entry {
	f.t.Helper()
	var e *Entry
	waitFor(f.t, uid+" "+what, func() bool {
		e = f.svc.view.get(uid)
		return e != nil && cond(e)
	})
	return e
}

// worklistEvents returns the worklist.updated events in the stream, each
// checked against the event contract.
func (f *fixture) worklistEvents() []events.WorklistUpdated {
	f.t.Helper()
	var out []events.WorklistUpdated
	for _, m := range natstest.Messages(f.t, f.srv.JS, "PACSFLOW", events.SubjectWorklistUpdated+".") {
		if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
			f.t.Errorf("%s: %v", m.Subject, err)
		}
		var u events.WorklistUpdated
		if err := json.Unmarshal(m.Data, &u); err != nil {
			f.t.Fatal(err)
		}
		if want := events.WorklistUpdatedSubject(u.Change, u.Level); m.Subject != want {
			f.t.Errorf("subject %s, want %s", m.Subject, want)
		}
		out = append(out, u)
	}
	return out
}

// study is a study whose instances are in the fixture's store.
type study struct {
	uid      string
	series   []events.SeriesManifest
	priority string
	first    time.Time
}

// newStudy stores n 64×64 CR images of a study.
func (f *fixture) newStudy(n int, priority string, first time.Time) *study {
	s := &study{uid: uid.New(), priority: priority, first: first}
	series := s.uid + ".1"
	m := events.SeriesManifest{SeriesInstanceUID: series, Modality: "CR", Description: "CHEST PA"}
	for i := range n {
		in := dicomtest.Instance{
			SOPClassUID: "1.2.840.10008.5.1.4.1.1.1", SOPInstanceUID: fmt.Sprintf("%s.%d", series, i+1),
			StudyInstanceUID: s.uid, SeriesInstanceUID: series, Modality: "CR", InstanceNumber: i + 1,
			Image: &dicomtest.Image{Rows: 64, Cols: 64, BitsStored: 12, Photometric: "MONOCHROME2", Values: make([]uint16, 64*64)},
		}
		for j := range in.Image.Values {
			in.Image.Values[j] = uint16(j % 4096)
		}
		b := in.Part10()
		key := in.SOPInstanceUID + ".v1"
		f.store[key] = b
		m.Instances = append(m.Instances, events.InstanceRef{SOPInstanceUID: in.SOPInstanceUID, SOPClassUID: in.SOPClassUID, InstanceNumber: i + 1,
			TransferSyntaxUID: uid.ExplicitVRLittleEndian, Object: events.StoredObject{Backend: "fs", Key: key, Size: int64(len(b)), SHA256: strings.Repeat("0", 64)}})
	}
	m.NumInstances = n
	s.series = append(s.series, m)
	return s
}

func (s *study) sop(i int) string { return s.series[0].Instances[i].SOPInstanceUID }

func (s *study) received(gen int) *events.Event {
	typ, root := events.TypeStudyReceived, events.SubjectStudyReceived
	if gen > 1 {
		typ, root = events.TypeStudyUpdated, events.SubjectStudyUpdated
	}
	n := 0
	for _, se := range s.series {
		n += len(se.Instances)
	}
	return &events.Event{
		ID: fmt.Sprintf("study/%s/%d", s.uid, gen), Type: typ, Source: "test", Subject: s.uid, Time: s.first.Add(3 * time.Second),
		NATSSubject: events.StudySubject(root, []string{"CR"}, "PACSFLOW"),
		Data: &events.StudyReceived{
			Patient:    events.Patient{ID: "P-" + s.uid[len(s.uid)-4:], Name: "DOE^JANE"},
			Study:      events.Study{StudyInstanceUID: s.uid, AccessionNumber: "A1", Description: "CHEST", RequestedProcedurePriority: s.priority},
			Modalities: []string{"CR"}, Series: s.series, NumSeries: len(s.series), NumInstances: n,
			CallingAEs: []string{"SCU"}, CalledAEs: []string{"PACSFLOW"}, Associations: []string{"a"},
			FirstReceivedAt: s.first, LastReceivedAt: s.first.Add(time.Second), Trigger: events.TriggerQuietPeriod, Generation: gen,
		},
	}
}

var testModel = events.ModelRef{Name: "fake", Version: "1", ContractVersion: "1", IntendedUse: "tests only"}

// results are the model's three events for a study: a nodule of
// probability p in its first image.
func (s *study) results(gen int, level string, p float64) []*events.Event {
	findings := []events.Finding{
		{Label: "nodule", Probability: p, Present: p >= 0.5, Box: []float64{0.25, 0.25, 0.75, 0.5}, SOPInstanceUID: s.sop(0), Frame: 1},
		{Label: "effusion", Probability: 0.1, Box: []float64{0, 0, 1, 1}, SOPInstanceUID: s.sop(0), Frame: 1},
	}
	st := events.Study{StudyInstanceUID: s.uid, RequestedProcedurePriority: s.priority}
	ev := func(typ, subject string, data any) *events.Event {
		return &events.Event{ID: fmt.Sprintf("%s/%s/%d", typ, s.uid, gen), Type: typ, Source: "test", Subject: s.uid, Time: time.Now(), NATSSubject: subject, Data: data}
	}
	return []*events.Event{
		ev(events.TypeAIFindings, events.StudySubject(events.SubjectAIFindings, []string{"CR"}, "PACSFLOW"), &events.AIFindings{
			Study: st, Generation: gen, Modalities: []string{"CR"}, FirstReceivedAt: s.first, Model: testModel, Findings: findings, NumImages: 1, Skipped: []events.SkippedInstance{}}),
		ev(events.TypeAIReportDraft, events.StudySubject(events.SubjectAIReportDraft, []string{"CR"}, "PACSFLOW"), &events.AIReportDraft{
			Study: st, Generation: gen, Modalities: []string{"CR"}, FirstReceivedAt: s.first, Model: testModel, Text: "nodule right upper zone",
			MachineGenerated: true, SOPInstanceUID: s.sop(0), Frame: 1, Findings: findings}),
		ev(events.TypeAITriage, events.AITriageSubject(level, []string{"CR"}, "PACSFLOW"), &events.AITriage{
			Study: st, Generation: gen, Modalities: []string{"CR"}, FirstReceivedAt: s.first, Model: testModel, Level: level, Score: p, Reason: "test"}),
	}
}

func (f *fixture) publishAll(evs ...*events.Event) {
	f.t.Helper()
	for _, e := range evs {
		f.publish(e)
	}
}

func order(p worklistPage) []string {
	var out []string
	for _, e := range p.Entries {
		out = append(out, e.StudyInstanceUID)
	}
	return out
}

// The worklist from study events and model results: pending studies are
// ordered by their DICOM priority and arrival, triaged ones by level and
// score; every change is announced; the detail, preview and status work.
func TestWorklist(t *testing.T) {
	f := newFixture(t, Config{})
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	oldRoutine := f.newStudy(2, "", t0)
	statPriority := f.newStudy(1, "STAT", t0.Add(10*time.Minute))
	newRoutine := f.newStudy(2, "ROUTINE", t0.Add(20*time.Minute))
	f.publishAll(oldRoutine.received(1), statPriority.received(1), newRoutine.received(1))
	f.waitEntry(newRoutine.uid, "listed", func(*Entry) bool { return true })
	f.waitEntry(statPriority.uid, "listed", func(*Entry) bool { return true })
	f.waitEntry(oldRoutine.uid, "listed", func(*Entry) bool { return true })

	p := f.list("")
	if got, want := order(p), []string{statPriority.uid, oldRoutine.uid, newRoutine.uid}; !equal(got, want) {
		t.Errorf("pending order %v, want %v (DICOM priority, then arrival)", got, want)
	}
	for _, e := range p.Entries {
		if !e.Pending || e.Status != StatusNew || e.Patient.Name != "DOE^JANE" || e.AI != nil {
			t.Errorf("pending entry %+v", e)
		}
	}

	// The newer routine study gets an URGENT result, the older a ROUTINE one.
	f.publishAll(newRoutine.results(1, "URGENT", 0.7)...)
	f.publishAll(oldRoutine.results(1, "ROUTINE", 0.2)...)
	e := f.waitEntry(newRoutine.uid, "triaged", func(e *Entry) bool { return !e.Pending && e.AI.ReportGeneration == 1 && e.AI.FindingsGeneration == 1 })
	if e.Level != "URGENT" || e.Score != 0.7 || e.AI.Summary != "nodule 0.70" || e.AI.Report != "nodule right upper zone" || !e.AI.MachineGenerated ||
		e.AI.KeyImage == nil || e.AI.KeyImage.SOPInstanceUID != newRoutine.sop(0) || e.AI.Model != testModel {
		t.Errorf("triaged entry %+v, ai %+v", e, e.AI)
	}
	f.waitEntry(oldRoutine.uid, "triaged", func(e *Entry) bool { return !e.Pending })
	if got, want := order(f.list("")), []string{statPriority.uid, newRoutine.uid, oldRoutine.uid}; !equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if got, want := order(f.list("?level=URGENT,ROUTINE&limit=1&offset=1")), []string{oldRoutine.uid}; !equal(got, want) {
		t.Errorf("filtered page %v, want %v", got, want)
	}
	if s := f.getJSON("/api/v1/worklist?status=read", nil); s != http.StatusBadRequest {
		t.Errorf("bad status filter: %d", s)
	}

	// Detail and preview.
	var d studyDetail
	if s := f.getJSON("/api/v1/studies/"+newRoutine.uid, &d); s != http.StatusOK || len(d.Series) != 1 || len(d.Series[0].Instances) != 2 {
		t.Errorf("detail %d %+v", s, d)
	}
	if s := f.getJSON("/api/v1/studies/1.2.3", nil); s != http.StatusNotFound {
		t.Errorf("unknown study: %d", s)
	}
	checkPreview(t, f.http.URL+"/api/v1/studies/"+newRoutine.uid+"/preview", true)
	checkPreview(t, f.http.URL+"/api/v1/studies/"+newRoutine.uid+"/preview?sop="+newRoutine.sop(1), false)

	// Status.
	e = putStatus(t, f.http.URL, newRoutine.uid, `{"status":"in_review","by":"dr.who"}`, http.StatusOK)
	if e.Status != StatusInReview || e.StatusBy != "dr.who" || e.StatusAt == nil {
		t.Errorf("after the status change: %+v", e)
	}
	putStatus(t, f.http.URL, newRoutine.uid, `{"status":"read","by":"dr.who"}`, http.StatusBadRequest)
	putStatus(t, f.http.URL, newRoutine.uid, `{"status":"done"}`, http.StatusBadRequest)
	putStatus(t, f.http.URL, "1.2.3", `{"status":"done","by":"x"}`, http.StatusNotFound)
	f.waitEntry(newRoutine.uid, "in review", func(e *Entry) bool { return e.Status == StatusInReview })
	if got := order(f.list("?status=in_review")); !equal(got, []string{newRoutine.uid}) {
		t.Errorf("in review: %v", got)
	}

	// Every change was announced, once (a study's results may be applied
	// in any order: the consumer handles several events at once).
	changes := map[string][]string{}
	for _, u := range f.worklistEvents() {
		changes[u.StudyInstanceUID] = append(changes[u.StudyInstanceUID], u.Change)
	}
	want := map[string][]string{
		oldRoutine.uid:   {"added", "findings", "report", "triaged"},
		statPriority.uid: {"added"},
		newRoutine.uid:   {"added", "findings", "report", "status", "triaged"},
	}
	for uid, w := range want {
		slices.Sort(changes[uid])
		if !equal(changes[uid], w) {
			t.Errorf("%s announced %v, want %v", uid, changes[uid], w)
		}
	}
}

func equal(a, b []string) bool { return strings.Join(a, " ") == strings.Join(b, " ") }

// checkPreview gets a preview and checks that it is a PNG with, or
// without, the finding's red box.
func checkPreview(t *testing.T, url string, box bool) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("preview: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	img, err := png.Decode(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 64 || b.Dy() != 64 {
		t.Errorf("preview size %v, want 64×64", b)
	}
	// The box is y 0.25–0.75, x 0.25–0.5: its top-left corner is at
	// (16, 16); the centre of the box is left as it was.
	red := func(x, y int) bool {
		r, g, b, _ := img.At(x, y).RGBA()
		return r>>8 == 255 && g>>8 == 48 && b>>8 == 48
	}
	if red(16, 16) != box || red(17, 30) != box || red(24, 32) {
		t.Errorf("preview %s: box drawn %v %v, inside %v; want %v", url, red(16, 16), red(17, 30), red(24, 32), box)
	}
}

func putStatus(t *testing.T, base, uid, body string, want int) *Entry {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"/api/v1/studies/"+uid+"/status", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("PUT status %s: %d %s, want %d", body, resp.StatusCode, b, want)
	}
	var e Entry
	if want == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
	}
	return &e
}

// Results can come before the study event, and events come again: the
// entry ends the same, and a repeated event changes nothing.
func TestOutOfOrderAndRepeated(t *testing.T) {
	f := newFixture(t, Config{})
	s := f.newStudy(1, "", time.Now().Add(-time.Minute).UTC())
	res := s.results(1, "STAT", 0.95)
	f.publishAll(res[2], res[0])
	e := f.waitEntry(s.uid, "triaged with findings", func(e *Entry) bool { return !e.Pending && e.AI.FindingsGeneration == 1 })
	if e.Level != "STAT" || e.Generation != 0 || e.Patient.Name != "" {
		t.Errorf("entry from results only: %+v", e)
	}
	f.publishAll(s.received(1), res[1])
	e = f.waitEntry(s.uid, "with the study event and the report", func(e *Entry) bool { return e.Generation == 1 && e.AI.ReportGeneration == 1 })
	if e.Patient.Name != "DOE^JANE" || e.Level != "STAT" || e.NumInstances != 1 {
		t.Errorf("entry %+v", e)
	}
	rev := e.Revision
	// The same results under new event IDs (JetStream would drop the same
	// IDs), and an older generation of the study.
	for _, ev := range append(res, s.received(1)) {
		ev.ID += "/again"
		f.publish(ev)
	}
	waitFor(t, "the repeated events handled", func() bool {
		return testutil.ToFloat64(f.svc.m.events.WithLabelValues(events.TypeAITriage, "unchanged")) == 1 &&
			testutil.ToFloat64(f.svc.m.events.WithLabelValues(events.TypeStudyReceived, "unchanged")) == 1
	})
	if got := f.svc.view.get(s.uid).Revision; got != rev {
		t.Errorf("revision %d after repeated events, want %d", got, rev)
	}
	if n := len(f.worklistEvents()); n != 4 {
		t.Errorf("%d worklist events, want 4", n)
	}
}

// A later generation's results supersede the earlier ones.
func TestLaterGeneration(t *testing.T) {
	f := newFixture(t, Config{})
	s := f.newStudy(1, "", time.Now().Add(-time.Minute).UTC())
	f.publishAll(append([]*events.Event{s.received(1)}, s.results(1, "ROUTINE", 0.1)...)...)
	f.waitEntry(s.uid, "triaged", func(e *Entry) bool { return !e.Pending })
	f.publishAll(s.received(2))
	f.publishAll(s.results(2, "STAT", 0.97)...)
	e := f.waitEntry(s.uid, "triaged again", func(e *Entry) bool { return e.AI.TriageGeneration == 2 && e.AI.ReportGeneration == 2 })
	if e.Level != "STAT" || e.Generation != 2 || e.AI.Summary != "nodule 0.97" {
		t.Errorf("entry %+v", e)
	}
	// Generation 1 handled again (a redelivery) does not undo it.
	for _, ev := range s.results(1, "ROUTINE", 0.1) {
		ev.ID += "/again"
		f.publish(ev)
	}
	waitFor(t, "the old results handled", func() bool {
		return testutil.ToFloat64(f.svc.m.events.WithLabelValues(events.TypeAITriage, "unchanged")) == 1
	})
	if e := f.svc.view.get(s.uid); e.Level != "STAT" || e.AI.TriageGeneration != 2 {
		t.Errorf("after generation 1 again: %+v", e)
	}
}

// The worklist is in JetStream: a restarted service lists every entry,
// status included, before it handles a new event.
func TestRestart(t *testing.T) {
	f := newFixture(t, Config{})
	a := f.newStudy(1, "", time.Now().Add(-time.Hour).UTC())
	b := f.newStudy(1, "HIGH", time.Now().Add(-time.Minute).UTC())
	f.publishAll(a.received(1), b.received(1))
	f.publishAll(a.results(1, "STAT", 0.93)...)
	f.waitEntry(a.uid, "triaged", func(e *Entry) bool { return !e.Pending })
	f.waitEntry(b.uid, "listed", func(*Entry) bool { return true })
	putStatus(t, f.http.URL, a.uid, `{"status":"done","by":"dr.x"}`, http.StatusOK)
	f.stop()

	f.start(Config{})
	p := f.list("")
	if got, want := order(p), []string{a.uid, b.uid}; !equal(got, want) {
		t.Fatalf("after the restart: %v, want %v", got, want)
	}
	if e := p.Entries[0]; e.Status != StatusDone || e.StatusBy != "dr.x" || e.Level != "STAT" || e.AI.Report == "" {
		t.Errorf("restored entry %+v", e)
	}
	if e := p.Entries[1]; e.Level != "URGENT" || !e.Pending {
		t.Errorf("restored pending entry %+v (HIGH priority is URGENT)", e)
	}
}

// A study of generated (synthetic) images never enters the worklist.
func TestSyntheticStudyNotListed(t *testing.T) {
	f := newFixture(t, Config{})
	obj, err := genimage.Write(nil, genimage.Image{Rows: 8, Cols: 8, Values: make([]float32, 64)},
		genimage.Params{RequestID: "req-1", Task: "synthesize", Count: 1, ModelName: "m", ModelVersion: "1", Time: time.Unix(0, 0).UTC()}, genimage.Config{})
	if err != nil {
		t.Fatal(err)
	}
	key := obj.SOPInstanceUID + ".v1"
	f.store[key] = obj.Part10
	s := &study{uid: obj.StudyInstanceUID, first: time.Now().UTC(), series: []events.SeriesManifest{{
		SeriesInstanceUID: obj.SeriesInstanceUID, Modality: "OT", NumInstances: 1,
		Instances: []events.InstanceRef{{SOPInstanceUID: obj.SOPInstanceUID, SOPClassUID: "1.2.840.10008.5.1.4.1.1.7.3", TransferSyntaxUID: uid.ExplicitVRLittleEndian,
			Object: events.StoredObject{Backend: "fs", Key: key, Size: int64(len(obj.Part10)), SHA256: strings.Repeat("0", 64)}}},
	}}}
	clinical := f.newStudy(1, "", time.Now().UTC())
	f.publishAll(s.received(1), clinical.received(1))
	f.waitEntry(clinical.uid, "listed", func(*Entry) bool { return true })
	waitFor(t, "the synthetic study handled", func() bool {
		return testutil.ToFloat64(f.svc.m.events.WithLabelValues(events.TypeStudyReceived, "synthetic")) == 1
	})
	if got := order(f.list("")); !equal(got, []string{clinical.uid}) {
		t.Errorf("worklist %v, want only the clinical study", got)
	}
}

// The live stream sends each change, as the page gets it.
func TestStream(t *testing.T) {
	f := newFixture(t, Config{})
	resp, err := http.Get(f.http.URL + "/api/v1/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %s", ct)
	}
	s := f.newStudy(1, "", time.Now().UTC())
	f.publish(s.received(1))
	f.waitEntry(s.uid, "listed", func(*Entry) bool { return true })
	f.publishAll(s.results(1, "STAT", 0.96)...)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var (
		kind string
		got  []string
	)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && kind == "entry":
			var e Entry
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e); err != nil {
				t.Fatal(err)
			}
			if e.StudyInstanceUID != s.uid || e.Revision == 0 {
				t.Errorf("streamed %+v", e)
			}
			got = append(got, e.Change)
		}
		if len(got) == 4 {
			break
		}
	}
	slices.Sort(got)
	if want := []string{"added", "findings", "report", "triaged"}; !equal(got, want) {
		t.Errorf("streamed changes %v, want %v", got, want)
	}
}

// The order of the worklist.
func TestCompareEntries(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	entry := func(uid, level string, score float64, arrived int) *Entry {
		return &Entry{StudyInstanceUID: uid, Level: level, Score: score, FirstReceivedAt: t0.Add(time.Duration(arrived) * time.Minute)}
	}
	tests := []struct {
		name string
		a, b *Entry
	}{
		{"STAT before URGENT", entry("2", "STAT", 0.1, 9), entry("1", "URGENT", 0.99, 0)},
		{"URGENT before ROUTINE", entry("2", "URGENT", 0, 9), entry("1", "ROUTINE", 0.4, 0)},
		{"higher score first", entry("2", "URGENT", 0.8, 9), entry("1", "URGENT", 0.6, 0)},
		{"same score: longest waiting first", entry("2", "ROUTINE", 0.3, 1), entry("1", "ROUTINE", 0.3, 2)},
		{"same time: by UID", entry("1", "ROUTINE", 0, 1), entry("2", "ROUTINE", 0, 1)},
		{"an unknown level last", entry("2", "ROUTINE", 0, 9), entry("1", "CRITICAL", 1, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if compareEntries(tt.a, tt.b) >= 0 || compareEntries(tt.b, tt.a) <= 0 {
				t.Errorf("%+v should come before %+v", tt.a, tt.b)
			}
		})
	}
}

// A pending entry takes its level from the DICOM priority; the model's
// triage replaces it.
func TestSettle(t *testing.T) {
	tests := []struct {
		priority string
		ai       *AIResult
		level    string
		pending  bool
		summary  string
	}{
		{"", nil, "ROUTINE", true, ""},
		{"STAT", nil, "STAT", true, ""},
		{"high", nil, "URGENT", true, ""},
		{"MEDIUM", nil, "ROUTINE", true, ""},
		{"STAT", &AIResult{FindingsGeneration: 1, Findings: []events.Finding{{Label: "a", Probability: 0.4}}}, "STAT", true, "no finding above threshold"},
		{"", &AIResult{TriageGeneration: 1, Level: "URGENT", Score: 0.7, FindingsGeneration: 1,
			Findings: []events.Finding{{Label: "a", Probability: 0.6, Present: true}, {Label: "b", Probability: 0.7, Present: true}}}, "URGENT", false, "b 0.70, a 0.60"},
	}
	for _, tt := range tests {
		e := &Entry{Study: events.Study{RequestedProcedurePriority: tt.priority}, AI: tt.ai}
		e.settle()
		if e.Level != tt.level || e.Pending != tt.pending || e.Status != StatusNew || (tt.ai != nil && e.AI.Summary != tt.summary) {
			t.Errorf("priority %q, ai %+v: level %s pending %v status %s summary %q", tt.priority, tt.ai, e.Level, e.Pending, e.Status, tt.summary)
		}
	}
}

// The page and its assets are served from the binary, kept to their own
// origin.
func TestPage(t *testing.T) {
	f := newFixture(t, Config{})
	for _, path := range []string{"/", "/ui/app.js", "/ui/style.css"} {
		resp, err := http.Get(f.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || len(body) == 0 || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Errorf("GET %s: %d, %d bytes, CSP %q", path, resp.StatusCode, len(body), resp.Header.Get("Content-Security-Policy"))
		}
		if path == "/" && !strings.Contains(string(body), "<title>pacsflow worklist</title>") {
			t.Errorf("GET /: %s", body)
		}
	}
}
