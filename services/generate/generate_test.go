package generate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
	"github.com/pacsflow/pacsflow/pkg/storage/fsstore"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// fakeModel stands in for the network: an image is noise drawn from the
// seed (synthesize), or the source with its values halved (restore, convert),
// so a test can tell which it got.
type fakeModel struct {
	contract *model.Contract
	mu       sync.Mutex
	batches  []int
}

func newFakeModel() *fakeModel {
	return &fakeModel{contract: &model.Contract{
		ContractVersion: "1",
		Model:           model.ModelInfo{Name: "fake", Version: "1", IntendedUse: "tests only"},
		Labels:          []string{"nodule"},
		Preprocessing: model.Preprocessing{ImageSize: [2]int{8, 8}, Channels: 1, ValueRange: [2]float64{0, 1},
			Window: model.Window{Center: 2048, Width: 4096}, AcceptedModalities: []string{"CR"}},
		GenerateTasks: map[string]int32{"synthesize": 0, "restore": 1, "convert": 2},
		Signatures:    map[string]model.SignatureDef{model.SigGenerate: {}},
	}}
}

func (f *fakeModel) Contract() *model.Contract { return f.contract }

func (f *fakeModel) Generate(_ context.Context, reqs []model.GenerateRequest) ([]model.Image, error) {
	f.mu.Lock()
	f.batches = append(f.batches, len(reqs))
	f.mu.Unlock()
	out := make([]model.Image, len(reqs))
	for i, r := range reqs {
		px := make([]float32, 64)
		rng := rand.New(rand.NewPCG(r.Seed, 1))
		for j := range px {
			if r.Source != nil {
				px[j] = r.Source.Pixels[j] / 2
			} else {
				px[j] = rng.Float32()
			}
		}
		out[i] = model.Image{Pixels: px}
	}
	return out, nil
}

type fixture struct {
	t     *testing.T
	srv   *natstest.Server
	model *fakeModel
	store *fsstore.Store
	svc   *Service
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{t: t, srv: natstest.Start(t, natsserver.Config{}), model: newFakeModel()}
	ctx := context.Background()
	if _, err := events.Provision(ctx, f.srv.JS, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.store, err = fsstore.New(fsstore.Config{Root: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if cfg.Model == nil {
		cfg.Model = f.model
	}
	cfg.Store, cfg.Backend = f.store, events.BackendFS
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if f.svc, err = New(ctx, f.srv.JS, cfg); err != nil {
		t.Fatal(err)
	}
	run, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(run) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return f
}

func (f *fixture) publish(e *events.Event) {
	f.t.Helper()
	if e.Source == "" {
		e.Source = "test"
	}
	if _, err := events.NewPublisher(f.srv.JS, "test").Publish(context.Background(), e); err != nil {
		f.t.Fatal(err)
	}
}

// receive stores a CR study of one 16×16 instance of grey level v and
// publishes its study event; it returns the study and instance UIDs.
func (f *fixture) receive(v uint16) (study, sop string) {
	return f.receiveImage(&dicomtest.Image{Rows: 16, Cols: 16, BitsStored: 12, Photometric: "MONOCHROME2", Values: fill(256, v)})
}

// receiveImage stores a CR study of one instance with this image.
func (f *fixture) receiveImage(img *dicomtest.Image) (study, sop string) {
	f.t.Helper()
	study = uid.New()
	in := dicomtest.Instance{SOPClassUID: "1.2.840.10008.5.1.4.1.1.1", SOPInstanceUID: study + ".1.1", StudyInstanceUID: study,
		SeriesInstanceUID: study + ".1", Modality: "CR", PatientName: "DOE^JANE", PatientID: "P1", Image: img}
	key := study + "/" + study + ".1/" + in.SOPInstanceUID + ".v1"
	obj, err := f.store.Put(context.Background(), key, strings.NewReader(string(in.Part10())))
	if err != nil {
		f.t.Fatal(err)
	}
	ref := events.InstanceRef{SOPInstanceUID: in.SOPInstanceUID, SOPClassUID: in.SOPClassUID, TransferSyntaxUID: uid.ExplicitVRLittleEndian,
		Object: events.StoredObject{Backend: "fs", Key: key, Size: obj.Size, SHA256: obj.SHA256}}
	f.publish(&events.Event{
		ID: "study/" + study + "/1", Type: events.TypeStudyReceived, Subject: study, Time: time.Now(),
		NATSSubject: events.StudySubject(events.SubjectStudyReceived, []string{"CR"}, "PACSFLOW"),
		Data: &events.StudyReceived{Study: events.Study{StudyInstanceUID: study}, Modalities: []string{"CR"},
			Series:     []events.SeriesManifest{{SeriesInstanceUID: study + ".1", Modality: "CR", NumInstances: 1, Instances: []events.InstanceRef{ref}}},
			CallingAEs: []string{"SCU"}, CalledAEs: []string{"PACSFLOW"}, Associations: []string{"a"}, Generation: 1, Trigger: events.TriggerQuietPeriod},
	})
	return study, in.SOPInstanceUID
}

func fill(n int, v uint16) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func (f *fixture) request(r *events.AugmentationRequested) {
	f.t.Helper()
	r.RequestedAt = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	f.publish(RequestEvent(r))
}

// generated waits for n generated events and returns them, each checked
// against the contract.
func (f *fixture) generated(n int) []*events.AugmentationGenerated {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var out []*events.AugmentationGenerated
		for _, m := range f.messages(events.SubjectAugmentationGenerated + ".") {
			if err := events.ValidateMessage(m.Subject, m.Header, m.Data); err != nil {
				f.t.Errorf("%s: %v", m.Subject, err)
			}
			var g events.AugmentationGenerated
			if err := json.Unmarshal(m.Data, &g); err != nil {
				f.t.Fatal(err)
			}
			out = append(out, &g)
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%d generated events after 20 s, want %d", len(out), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fixture) messages(prefix string) []*jetstream.RawStreamMsg {
	f.t.Helper()
	return natstest.Messages(f.t, f.srv.JS, "PACSFLOW", prefix)
}

// pixels reads a generated object's stored values back.
func (f *fixture) pixels(o events.GeneratedObject) []float32 {
	f.t.Helper()
	rc, _, err := f.store.Open(context.Background(), o.Object.Key)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		f.t.Fatal(err)
	}
	fr, err := imaging.Decode(b)
	if err != nil {
		f.t.Fatal(err)
	}
	return fr.Values
}

func TestRestoreRequest(t *testing.T) {
	f := newFixture(t, Config{})
	study, sop := f.receive(2000)
	f.request(&events.AugmentationRequested{RequestID: "req-restore", StudyInstanceUID: study, Task: "restore", Count: 2, Seed: 3, RequestedBy: "cli"})
	g := f.generated(1)[0]
	if g.SourceStudyInstanceUID != study || g.SourceSOPInstanceUID != sop || !g.Synthetic || len(g.Objects) != 2 || g.Model.Name != "fake" {
		t.Fatalf("generated %+v", g)
	}
	if g.StudyInstanceUID == study || g.Objects[0].SOPInstanceUID == g.Objects[1].SOPInstanceUID {
		t.Errorf("generated objects must have a new study and their own UIDs: %+v", g)
	}
	// The fake halves the source: 2000/4095 of the window → about 0.244 → stored 1000.
	for _, o := range g.Objects {
		px := f.pixels(o)
		if len(px) != 64 || px[0] < 990 || px[0] > 1010 {
			t.Errorf("object %s: %d values, first %v; want 64 values near 1000", o.SOPInstanceUID, len(px), px[0])
		}
	}
}

// The same request handled again (a redelivery, a retried publish with
// another event ID) stores nothing new and gives the same objects; the same
// seed gives the same pixels under another request.
func TestIdempotentAndDeterministic(t *testing.T) {
	f := newFixture(t, Config{})
	study, _ := f.receive(1000)
	r := events.AugmentationRequested{RequestID: "req-a", StudyInstanceUID: study, Task: "synthesize", Prompt: "nodule", Count: 2, Seed: 11, RequestedBy: "cli"}
	f.request(&r)
	first := f.generated(1)[0]
	again := RequestEvent(&r)
	again.ID += "-again" // handled a second time, not dropped by JetStream
	f.publish(again)
	other := r
	other.RequestID, other.Count = "req-b", 1
	f.request(&other)
	// The three handlings succeed, the second finding its objects stored.
	waitFor(t, "three requests answered", func() bool { return testutil.ToFloat64(f.svc.m.requests.WithLabelValues("synthesize")) == 3 })
	gs := f.generated(2)
	if len(gs) != 2 {
		t.Fatalf("%d generated events, want 2: the request handled twice is published once", len(gs))
	}
	second := gs[1]
	if second.RequestID != "req-b" {
		t.Fatalf("second event is %s", second.RequestID)
	}
	if a, b := f.pixels(first.Objects[0]), f.pixels(second.Objects[0]); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("seed 11 gave different pixels in two requests")
	}
	if fmt.Sprint(f.pixels(first.Objects[0])) == fmt.Sprint(f.pixels(first.Objects[1])) {
		t.Errorf("seeds 11 and 12 gave the same pixels")
	}
	if first.Objects[0].SOPInstanceUID == second.Objects[0].SOPInstanceUID {
		t.Errorf("two requests share a SOP Instance UID")
	}
}

func TestPolicyRule(t *testing.T) {
	rules, err := ParsePolicy("nodule=synthesize:2")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, Config{Policy: rules})
	study, sop := f.receive(1000)
	findings := func(present bool) *events.Event {
		return &events.Event{
			ID: fmt.Sprintf("ai-findings/%s/1/%v", study, present), Type: events.TypeAIFindings, Subject: study, Time: time.Now(),
			NATSSubject: events.StudySubject(events.SubjectAIFindings, []string{"CR"}, "PACSFLOW"),
			Data: &events.AIFindings{Study: events.Study{StudyInstanceUID: study}, Generation: 1, Modalities: []string{"CR"},
				Findings: []events.Finding{{Label: "nodule", Probability: 0.9, Present: present, Box: []float64{0, 0, 1, 1}, SOPInstanceUID: sop, Frame: 1}},
				Skipped:  []events.SkippedInstance{}, AnalyzedAt: time.Now()},
		}
	}
	f.publish(findings(false))
	f.publish(findings(true))
	g := f.generated(1)
	if len(g) != 1 || g[0].Task != "synthesize" || g[0].Prompt != "nodule" || len(g[0].Objects) != 2 {
		t.Errorf("policy generated %+v, want one request of 2 nodule images", g)
	}
	if reqs := f.messages(events.SubjectAugmentationRequested + "."); len(reqs) != 1 || !strings.Contains(string(reqs[0].Data), `"requested_by":"policy:nodule"`) {
		t.Errorf("%d requests, want 1 from the policy", len(reqs))
	}
}

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{"", "[]", ""},
		{"nodule=synthesize:4", "[nodule=synthesize:4:nodule]", ""},
		{"nodule=synthesize:4:normal, effusion=restore:1", "[nodule=synthesize:4:normal effusion=restore:1:effusion]", ""},
		{"nodule", "", "want label=task:count"},
		{"nodule=synthesize:0", "", "want 1 to 64"},
		{"nodule=synthesize:x", "", "want 1 to 64"},
	} {
		rules, err := ParsePolicy(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParsePolicy(%q) = %v, want an error saying %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(rules) != c.want && !(c.want == "[]" && len(rules) == 0) {
			t.Errorf("ParsePolicy(%q) = %v, %v; want %s", c.in, rules, err, c.want)
		}
	}
}

// A request for a study never received is retried, then dead-lettered
// with the reason.
func TestUnknownStudyDeadLetters(t *testing.T) {
	f := newFixture(t, Config{MaxDeliver: 2})
	f.request(&events.AugmentationRequested{RequestID: "req-x", StudyInstanceUID: "1.2.3.4", Task: "synthesize", Count: 1, RequestedBy: "cli"})
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := f.srv.JS.Stream(ctx, events.StreamConfig{}.DeadLetterStream())
		if err == nil {
			if m, err := st.GetLastMsgForSubject(ctx, "dlq.generate.>"); err == nil {
				if r := m.Header.Get(events.HeaderDLQError); !strings.Contains(r, "study 1.2.3.4 has not been received") {
					t.Errorf("dead letter reason %q", r)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no dead letter after 20 s")
		}
		time.Sleep(50 * time.Millisecond)
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

func TestHTTPRoutes(t *testing.T) {
	f := newFixture(t, Config{})
	study, sop := f.receive(1000)
	mux := http.NewServeMux()
	f.svc.Routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, c := range []struct {
		body string
		code int
	}{
		{fmt.Sprintf(`{"study_instance_uid":%q,"task":"synthesize","prompt":"nodule","count":2,"seed":4}`, study), http.StatusAccepted},
		{fmt.Sprintf(`{"study_instance_uid":%q,"task":"colourize"}`, study), http.StatusBadRequest},
		{`{"study_instance_uid":"1.2.3","task":"synthesize","count":99}`, http.StatusBadRequest},
		{`{"study":"1.2.3"}`, http.StatusBadRequest},
		{`not JSON`, http.StatusBadRequest},
	} {
		resp, err := http.Post(srv.URL+"/v1/augmentations", "application/json", strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("POST %s: %d %s, want %d", c.body, resp.StatusCode, b, c.code)
		}
	}
	g := f.generated(1)[0]
	if g.Prompt != "nodule" || len(g.Objects) != 2 || !strings.HasPrefix(g.RequestID, "http-") {
		t.Errorf("generated %+v for the HTTP request", g)
	}

	get := func(key string) (int, string) {
		resp, err := http.Get(srv.URL + "/v1/preview?key=" + url.QueryEscape(key))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(g.Objects[0].Object.Key); code != http.StatusOK || !strings.HasPrefix(body, "\x89PNG") {
		t.Errorf("preview of a generated image: %d", code)
	}
	// The source is a clinical image: not served.
	if code, _ := get(study + "/" + study + ".1/" + sop + ".v1"); code != http.StatusNotFound {
		t.Errorf("preview of a clinical image: %d, want 404", code)
	}
	if code, _ := get("../etc/passwd"); code != http.StatusBadRequest {
		t.Errorf("preview of ../etc/passwd: %d, want 400", code)
	}
}
