package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pacsflow/pacsflow/internal/smtptest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/mailer"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
	"github.com/pacsflow/pacsflow/pkg/webhook"
)

// webhookDurable is the webhook consumer's default name.
const webhookDurable = "notify-webhooks"

// hook is one request a receiver got.
type hook struct {
	id      string
	body    []byte
	payload Payload
	// answered is the status the receiver gave.
	answered int
}

// receiver is a webhook endpoint as a customer would write one: it
// verifies each request's signature with its secret before anything else,
// then records it and answers what answer says for the nth attempt at the
// delivery (nil: 200).
type receiver struct {
	t      *testing.T
	secret []byte
	answer func(attempt int) int
	srv    *httptest.Server

	mu  sync.Mutex
	got []hook
}

func newReceiver(t *testing.T, secret string, answer func(attempt int) int) *receiver {
	t.Helper()
	r := &receiver{t: t, secret: []byte(secret), answer: answer}
	r.srv = httptest.NewServer(r)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.t.Errorf("receiver: %v", err)
		return
	}
	// A signature that does not verify with this rule's secret fails the
	// test: a delivery signed with another rule's secret would be
	// rejected by a real receiver.
	if err := webhook.Verify(req.Header.Get(webhook.HeaderSignature), body, time.Now(), 5*time.Minute, r.secret); err != nil {
		r.t.Errorf("receiver %s: %v", req.Header.Get(webhook.HeaderDelivery), err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var p Payload
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		r.t.Errorf("receiver: payload %s: %v", body, err)
	}
	id := req.Header.Get(webhook.HeaderDelivery)
	if p.ID != id || req.Method != http.MethodPost || req.Header.Get(webhook.HeaderEvent) != EventStudyTriaged ||
		req.Header.Get("Content-Type") != "application/json" {
		r.t.Errorf("receiver: %s %s, %s %q, payload id %q, content type %q", req.Method, id, webhook.HeaderEvent,
			req.Header.Get(webhook.HeaderEvent), p.ID, req.Header.Get("Content-Type"))
	}
	r.mu.Lock()
	attempt := 1
	for _, h := range r.got {
		if h.id == id {
			attempt++
		}
	}
	status := http.StatusOK
	if r.answer != nil {
		status = r.answer(attempt)
	}
	r.got = append(r.got, hook{id: id, body: body, payload: p, answered: status})
	r.mu.Unlock()
	w.WriteHeader(status)
}

// requests returns the requests received so far, in order.
func (r *receiver) requests() []hook {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// counts returns how many requests each delivery ID got.
func (r *receiver) counts() map[string]int {
	out := map[string]int{}
	for _, h := range r.requests() {
		out[h.id]++
	}
	return out
}

// waitRequests waits until the receiver got n requests at least.
func (r *receiver) waitRequests(n int) []hook {
	r.t.Helper()
	waitFor(r.t, fmt.Sprintf("%d webhook requests", n), func() bool { return len(r.requests()) >= n })
	return r.requests()
}

// answers returns an answer function giving statuses in turn, the last one
// from then on.
func answers(statuses ...int) func(int) int {
	return func(attempt int) int { return statuses[min(attempt, len(statuses))-1] }
}

// secretOf is a signing secret of 16 bytes at least, distinct per rule, so
// that a delivery signed with the wrong rule's secret fails verification.
func secretOf(name string) string { return "webhook-secret-of-" + name }

// rule makes r sign with secretOf(r.Name) and deliver to rcv.
func rule(t *testing.T, r Rule, rcv *receiver) Rule {
	t.Helper()
	r.URL = rcv.srv.URL + "/hook/" + r.Name
	r, err := r.WithSecret([]byte(secretOf(r.Name)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// webhookConfig is a Config with rules and retries quick enough for tests.
func webhookConfig(attempts int, rules ...Rule) Config {
	return Config{Webhooks: WebhookConfig{Rules: rules, Attempts: attempts, Backoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}}
}

// newWebhookFixture starts a service with webhook rules and waits until its
// webhook consumer exists: it starts at the time the service started, and
// a triage published before it is created could be skipped.
func newWebhookFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := newFixture(t, cfg)
	waitFor(t, "the webhook consumer", func() bool {
		_, err := f.srv.JS.Consumer(t.Context(), events.StreamConfig{}.StreamName(), webhookDurable)
		return err == nil
	})
	return f
}

// replica starts another service on the same NATS server, with a
// connection of its own, as a second replica would run.
func (f *fixture) replica(cfg Config) *fixture {
	f.t.Helper()
	nc, err := f.srv.Connect()
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close) // after the replica's stop, registered below
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	r := &fixture{t: f.t, srv: &natstest.Server{Server: f.srv.Server, Conn: nc, JS: js}, store: f.store}
	r.start(cfg)
	return r
}

// publishSeq publishes e and returns its sequence in the stream.
func (f *fixture) publishSeq(e *events.Event) uint64 {
	f.t.Helper()
	m, err := e.Message()
	if err != nil {
		f.t.Fatal(err)
	}
	ack, err := f.srv.JS.PublishMsg(f.t.Context(), m)
	if err != nil {
		f.t.Fatal(err)
	}
	return ack.Sequence
}

// webhooksSettled reports whether the webhook consumer has settled
// (acknowledged or dead-lettered) every triage up to seq: from then on no
// delivery can be attempted again, so counting them is final.
func (f *fixture) webhooksSettled(seq uint64) func() bool {
	return func() bool {
		c, err := f.srv.JS.Consumer(f.t.Context(), events.StreamConfig{}.StreamName(), webhookDurable)
		if err != nil {
			f.t.Fatal(err)
		}
		info := c.CachedInfo()
		return info.AckFloor.Stream >= seq && info.NumAckPending == 0
	}
}

// triageEvent is the study's ai.triage of gen (as study.results makes it),
// for other modalities and another called AE.
func (s *study) triageEvent(gen int, level string, p float64, modalities []string, calledAE string) *events.Event {
	e := s.results(gen, level, p)[2]
	e.Data.(*events.AITriage).Modalities = modalities
	e.NATSSubject = events.AITriageSubject(level, modalities, calledAE)
	return e
}

// prepare lists the study (generation 1) with its findings and report of
// gen, and waits until the worklist has them: a triage published after
// that finds, deterministically, what PHI and findings rules need.
func (f *fixture) prepare(s *study, gen int, p float64) {
	f.t.Helper()
	res := s.results(gen, events.TriageRoutine, p)
	f.publishAll(s.received(1), res[0], res[1])
	f.waitEntry(s.uid, "with findings and report", func(e *Entry) bool {
		return e.Generation == 1 && e.AI != nil && e.AI.FindingsGeneration == gen && e.AI.ReportGeneration == gen
	})
}

func deliveryID(triage *events.Event, rule string) string { return triage.ID + "/" + rule }

// deliveries reads the delivery log through the API.
func (f *fixture) deliveries(query string) []DeliveryRecord {
	f.t.Helper()
	var out struct {
		Deliveries []DeliveryRecord `json:"deliveries"`
	}
	if s := f.getJSON("/api/v1/deliveries"+query, &out); s != http.StatusOK {
		f.t.Fatalf("GET /api/v1/deliveries%s: %d", query, s)
	}
	return out.Deliveries
}

func (f *fixture) deadLetters() []*events.DeadLetter {
	f.t.Helper()
	var out []*events.DeadLetter
	if err := events.ListDeadLetters(f.t.Context(), f.srv.JS, events.StreamConfig{}, webhookDurable, func(d *events.DeadLetter) error {
		out = append(out, d)
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func statuses(rec DeliveryRecord) []int {
	var out []int
	for _, a := range rec.Attempts {
		out = append(out, a.Status)
	}
	return out
}

// Each triaged study goes to the rules it matches, by level, modality,
// called AE and findings, once per rule; the payload carries PHI only for
// a rule that asks for it.
func TestWebhookRules(t *testing.T) {
	names := []string{"urgent", "ct", "er", "nodule", "phi"}
	rcv := map[string]*receiver{}
	for _, n := range names {
		rcv[n] = newReceiver(t, secretOf(n), nil)
	}
	// A receiver's URL may hold credentials: the delivery log must not
	// show them.
	ct := rule(t, Rule{Name: "ct", MinLevel: "ROUTINE", Modalities: []string{"CT"}}, rcv["ct"])
	ct.URL = strings.Replace(ct.URL, "://", "://hook:pw@", 1) + "?key=s3cret"
	cfg := webhookConfig(3,
		rule(t, Rule{Name: "urgent", MinLevel: "URGENT"}, rcv["urgent"]),
		ct,
		rule(t, Rule{Name: "er", MinLevel: "ROUTINE", CalledAEs: []string{"ER SCP"}}, rcv["er"]),
		rule(t, Rule{Name: "nodule", MinLevel: "URGENT", Findings: []string{"nodule"}}, rcv["nodule"]),
		rule(t, Rule{Name: "phi", MinLevel: "STAT", PHI: true}, rcv["phi"]),
	)
	cfg.Webhooks.PublicURL = "https://pacs.example/worklist/"
	f := newWebhookFixture(t, cfg)

	t0 := time.Now().Add(-time.Hour).UTC()
	type triaged struct {
		name, level string
		p           float64 // the nodule's probability: present from 0.5
		modalities  []string
		calledAE    string
		rules       []string // the rules it matches
	}
	studies := []triaged{
		{"stat nodule", "STAT", 0.9, []string{"CR"}, "PACSFLOW", []string{"urgent", "nodule", "phi"}},
		{"urgent, no finding present", "URGENT", 0.3, []string{"CR"}, "PACSFLOW", []string{"urgent"}},
		{"routine", "ROUTINE", 0.1, []string{"CR"}, "PACSFLOW", nil},
		// The rule's AE title matches the subject's token of it.
		{"routine CT for the ER", "ROUTINE", 0.2, []string{"CT", "SR"}, "ER_SCP", []string{"ct", "er"}},
		{"urgent MR for the ER", "URGENT", 0.4, []string{"MR"}, "ER_SCP", []string{"urgent", "er"}},
	}
	want := map[string]map[string]*study{} // rule → delivery ID → study
	for _, n := range names {
		want[n] = map[string]*study{}
	}
	var (
		last uint64
		tri  = map[*study]triaged{}
	)
	// The studies are stored before any is published: the service reads
	// the store as the test would write it.
	stored := make([]*study, len(studies))
	for i := range studies {
		stored[i] = f.newStudy(1, "", t0.Add(time.Duration(i)*time.Minute))
	}
	for i, st := range studies {
		s := stored[i]
		f.prepare(s, 1, st.p)
		e := s.triageEvent(1, st.level, st.p, st.modalities, st.calledAE)
		last = f.publishSeq(e)
		tri[s] = st
		for _, r := range st.rules {
			want[r][deliveryID(e, r)] = s
		}
	}
	waitFor(t, "every triage settled", f.webhooksSettled(last))

	for _, n := range names {
		got := rcv[n].counts()
		for id, c := range got {
			if _, ok := want[n][id]; !ok || c != 1 {
				t.Errorf("rule %s: delivery %s received %d times, want it once if the rule matches (%v)", n, id, c, ok)
			}
		}
		for id := range want[n] {
			if got[id] == 0 {
				t.Errorf("rule %s: delivery %s not received", n, id)
			}
		}
		for _, h := range rcv[n].requests() {
			s := want[n][h.id]
			if s == nil {
				continue
			}
			st, p := tri[s], h.payload
			if p.Event != EventStudyTriaged || p.Rule != n || p.StudyInstanceUID != s.uid || p.Level != st.level || p.Score != st.p ||
				p.Generation != 1 || !slices.Equal(p.Modalities, st.modalities) || p.CalledAE != st.calledAE || p.TriagedAt.IsZero() ||
				p.URL != "https://pacs.example/worklist/#study="+s.uid {
				t.Errorf("rule %s, %s: payload %s", n, st.name, h.body)
			}
			checkPHI(t, n, h, s, n == "phi")
		}
	}
	recs := f.deliveries("")
	if len(recs) != 8 {
		t.Errorf("%d deliveries logged, want 8", len(recs))
	}
	for _, rec := range recs {
		if rec.State != DeliveryDelivered || !slices.Equal(statuses(rec), []int{200}) || rec.URL != rcv[rec.Rule].srv.URL+"/hook/"+rec.Rule {
			t.Errorf("logged %+v", rec)
		}
	}
}

// checkPHI checks that a delivery carries the patient, the findings and
// the draft when its rule asks for PHI, and nothing identifying otherwise.
func checkPHI(t *testing.T, rule string, h hook, s *study, phi bool) {
	t.Helper()
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(h.body, &raw); err != nil {
		t.Fatal(err)
	}
	_, hasPHI := raw["phi"]
	patientID := "P-" + s.uid[len(s.uid)-4:]
	if !phi {
		for _, leak := range []string{"DOE", "JANE", patientID, "nodule right upper zone", "CHEST"} {
			if bytes.Contains(h.body, []byte(leak)) {
				t.Errorf("rule %s without PHI sent %q: %s", rule, leak, h.body)
			}
		}
		if hasPHI {
			t.Errorf("rule %s without PHI has a phi key: %s", rule, h.body)
		}
		return
	}
	p := h.payload.PHI
	if p == nil || p.Patient.Name != "DOE^JANE" || p.Patient.ID != patientID || p.AccessionNumber != "A1" || p.StudyDescription != "CHEST" ||
		p.Reason != "test" || p.FindingsSummary != "nodule 0.90" || p.Report != "nodule right upper zone" {
		t.Errorf("rule %s with PHI: %s", rule, h.body)
	}
}

// A PHI payload carries the draft and findings summary of the triage's
// own generation only: generation 2's triage, with generation 2's findings
// but no new draft, sends no draft rather than generation 1's.
func TestWebhookPHIOfTheTriageGeneration(t *testing.T) {
	rcv := newReceiver(t, secretOf("phi"), nil)
	f := newWebhookFixture(t, webhookConfig(5, rule(t, Rule{Name: "phi", PHI: true}, rcv)))
	s := f.newStudy(1, "", time.Now().UTC())
	f.prepare(s, 1, 0.9)
	f.publish(s.results(2, "STAT", 0.97)[0])
	f.waitEntry(s.uid, "generation 2's findings", func(e *Entry) bool { return e.AI.FindingsGeneration == 2 })
	f.publish(s.results(2, "STAT", 0.97)[2])
	p := rcv.waitRequests(1)[0].payload.PHI
	if p == nil || p.FindingsSummary != "nodule 0.97" || p.Report != "" {
		t.Errorf("PHI %+v, want generation 2's summary and no draft", p)
	}
}

// A findings rule waits for the findings of the triage's own generation:
// an earlier generation's do not count, and a triage that arrives first is
// tried again until they come.
func TestWebhookWaitsForFindings(t *testing.T) {
	rcv := newReceiver(t, secretOf("nodule"), nil)
	// Attempts enough to wait for the findings (up to 100 ms apart).
	f := newWebhookFixture(t, webhookConfig(200, rule(t, Rule{Name: "nodule", MinLevel: "URGENT", Findings: []string{"nodule"}}, rcv)))
	present := f.newStudy(1, "", time.Now().UTC())
	absent := f.newStudy(1, "", time.Now().UTC())
	for _, s := range []*study{present, absent} {
		f.prepare(s, 1, 0.9) // generation 1: a nodule
	}
	var last uint64
	for _, s := range []*study{present, absent} {
		last = f.publishSeq(s.results(2, "STAT", 0.9)[2])
	}
	// Both triages of generation 2 came back for want of their findings.
	waitFor(t, "the triages redelivered", func() bool {
		c, err := f.srv.JS.Consumer(t.Context(), events.StreamConfig{}.StreamName(), webhookDurable)
		if err != nil {
			t.Fatal(err)
		}
		return c.CachedInfo().Delivered.Consumer >= 4
	})
	if n := len(rcv.requests()); n != 0 {
		t.Fatalf("%d deliveries before the findings of the triage's generation", n)
	}
	f.publish(present.results(2, "STAT", 0.9)[0])
	f.publish(absent.results(2, "STAT", 0.2)[0])
	waitFor(t, "both triages settled", f.webhooksSettled(last))
	want := map[string]int{deliveryID(present.results(2, "STAT", 0.9)[2], "nodule"): 1}
	if got := rcv.counts(); !maps.Equal(got, want) {
		t.Errorf("deliveries %v, want %v", got, want)
	}
	if dl := f.deadLetters(); len(dl) != 0 {
		t.Errorf("%d dead letters", len(dl))
	}
}

// A failed delivery is tried again with the same ID and body until the
// receiver accepts it, or dead-lettered once the attempts are spent; a
// receiver that refuses it (4xx) is not asked again.
func TestWebhookRetries(t *testing.T) {
	tests := []struct {
		name     string
		answer   func(int) int
		attempts int
		state    string
		statuses []int
		// deadLetter is the deliveries of the dead letter, 0 for none.
		deadLetter int
	}{
		{"accepted on the third attempt", answers(503, 503, 200), 5, DeliveryDelivered, []int{503, 503, 200}, 0},
		{"unavailable throughout", answers(503), 3, DeliveryFailed, []int{503, 503, 503}, 3},
		{"gone", answers(410), 5, DeliveryFailed, []int{410}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rcv := newReceiver(t, secretOf("oncall"), tt.answer)
			f := newWebhookFixture(t, webhookConfig(tt.attempts, rule(t, Rule{Name: "oncall"}, rcv)))
			s := f.newStudy(1, "", time.Now().UTC())
			e := s.results(1, "STAT", 0.95)[2]
			seq := f.publishSeq(e)
			// A dead letter is stored before its message is terminated: it
			// is there once the consumer has settled.
			waitFor(t, "the triage settled", f.webhooksSettled(seq))

			hooks := rcv.requests()
			var got []int
			for _, h := range hooks {
				got = append(got, h.answered)
				if h.id != deliveryID(e, "oncall") || !bytes.Equal(h.body, hooks[0].body) {
					t.Errorf("attempt %s: %s, want the ID and body of the first attempt %s", h.id, h.body, hooks[0].body)
				}
			}
			if !slices.Equal(got, tt.statuses) {
				t.Errorf("receiver answered %v, want %v", got, tt.statuses)
			}
			recs := f.deliveries("")
			if len(recs) != 1 || recs[0].State != tt.state || !slices.Equal(statuses(recs[0]), tt.statuses) ||
				recs[0].ID != deliveryID(e, "oncall") || recs[0].StudyInstanceUID != s.uid || recs[0].Level != "STAT" {
				t.Fatalf("delivery log %+v, want one %s with %v", recs, tt.state, tt.statuses)
			}
			for i, a := range recs[0].Attempts {
				if (a.Error == "") != (a.Status == 200) || a.At.IsZero() {
					t.Errorf("attempt %d: %+v", i+1, a)
				}
			}
			if n := len(f.deliveries("?state=" + tt.state)); n != 1 {
				t.Errorf("?state=%s lists %d", tt.state, n)
			}
			dls := f.deadLetters()
			switch {
			case tt.deadLetter == 0 && len(dls) != 0:
				t.Errorf("%d dead letters, want none", len(dls))
			case tt.deadLetter > 0 && (len(dls) != 1 || dls[0].Deliveries != tt.deadLetter || dls[0].StreamSeq != seq ||
				dls[0].Consumer != webhookDurable || !strings.Contains(dls[0].Error, fmt.Sprint(tt.statuses[0]))):
				t.Errorf("dead letters %+v, want one of stream sequence %d after %d deliveries", dls, seq, tt.deadLetter)
			}
			outcome := testutil.ToFloat64(f.svc.m.deliveries.WithLabelValues("oncall", tt.state))
			if outcome != 1 {
				t.Errorf("metric %s: %v, want 1", tt.state, outcome)
			}
		})
	}
}

// A dead-lettered delivery replayed (pacsflow dlq replay) is tried again,
// once the receiver is back: the same delivery ID, a new series of
// attempts.
func TestWebhookReplayedDeadLetter(t *testing.T) {
	rcv := newReceiver(t, secretOf("oncall"), answers(503, 503, 200))
	f := newWebhookFixture(t, webhookConfig(2, rule(t, Rule{Name: "oncall"}, rcv)))
	s := f.newStudy(1, "", time.Now().UTC())
	e := s.results(1, "STAT", 0.95)[2]
	waitFor(t, "the triage settled", f.webhooksSettled(f.publishSeq(e)))
	dls := f.deadLetters()
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	if _, err := events.ReplayDeadLetter(t.Context(), f.srv.JS, events.StreamConfig{}, dls[0], true); err != nil {
		t.Fatal(err)
	}
	hooks := rcv.waitRequests(3)
	if hooks[2].id != deliveryID(e, "oncall") || hooks[2].answered != 200 {
		t.Errorf("after the replay: %+v, want the same delivery accepted", hooks[2])
	}
	waitFor(t, "the delivery logged as delivered", func() bool {
		recs := f.deliveries("")
		return len(recs) == 1 && recs[0].State == DeliveryDelivered && slices.Equal(statuses(recs[0]), []int{503, 503, 200})
	})
}

// When one receiver fails, the event is tried again for it only: the
// receiver that accepted it is not sent it again.
func TestWebhookPartialFailure(t *testing.T) {
	ok := newReceiver(t, secretOf("ok"), nil)
	flaky := newReceiver(t, secretOf("flaky"), answers(503, 503, 200))
	f := newWebhookFixture(t, webhookConfig(5, rule(t, Rule{Name: "ok"}, ok), rule(t, Rule{Name: "flaky"}, flaky)))
	s := f.newStudy(1, "", time.Now().UTC())
	e := s.results(1, "URGENT", 0.8)[2]
	waitFor(t, "the triage settled", f.webhooksSettled(f.publishSeq(e)))
	if got, want := ok.counts(), map[string]int{deliveryID(e, "ok"): 1}; !maps.Equal(got, want) {
		t.Errorf("accepting receiver got %v, want %v", got, want)
	}
	if got, want := flaky.counts(), map[string]int{deliveryID(e, "flaky"): 3}; !maps.Equal(got, want) {
		t.Errorf("failing receiver got %v, want %v", got, want)
	}
	for _, rec := range f.deliveries("") {
		want := map[string][]int{"ok": {200}, "flaky": {503, 503, 200}}[rec.Rule]
		if rec.State != DeliveryDelivered || !slices.Equal(statuses(rec), want) {
			t.Errorf("%s logged %s %v, want delivered %v", rec.Rule, rec.State, statuses(rec), want)
		}
	}
}

// Replicas share the webhook consumer: each delivery is made by one of
// them, once.
func TestWebhookReplicas(t *testing.T) {
	rcv := newReceiver(t, secretOf("stat"), nil)
	cfg := webhookConfig(3, rule(t, Rule{Name: "stat", MinLevel: "STAT"}, rcv))
	f := newWebhookFixture(t, cfg)
	other := f.replica(cfg)
	const n = 20
	var studies []*study
	for i := range n {
		studies = append(studies, f.newStudy(1, "", time.Now().Add(time.Duration(i)*time.Second).UTC()))
	}
	want := map[string]int{}
	var last uint64
	for _, s := range studies {
		e := s.results(1, "STAT", 0.9)[2]
		want[deliveryID(e, "stat")] = 1
		last = f.publishSeq(e)
	}
	rcv.waitRequests(n)
	waitFor(t, "every triage settled", f.webhooksSettled(last))
	if got := rcv.counts(); !maps.Equal(got, want) {
		t.Errorf("%d requests for %d deliveries, want each of %d once: %v", len(rcv.requests()), len(got), n, got)
	}
	// Which replica made which delivery is up to JetStream; together they
	// made each one.
	a := testutil.ToFloat64(f.svc.m.deliveries.WithLabelValues("stat", DeliveryDelivered))
	b := testutil.ToFloat64(other.svc.m.deliveries.WithLabelValues("stat", DeliveryDelivered))
	t.Logf("replicas delivered %v and %v", a, b)
	if a+b != n {
		t.Errorf("replicas delivered %v + %v, want %d", a, b, n)
	}
	if recs := f.deliveries("?limit=1000"); len(recs) != n {
		t.Errorf("%d deliveries logged, want %d", len(recs), n)
	}
}

// The rules file: secrets come from the environment or a file, never the
// rules file itself, and every mistake is reported at start-up.
func TestLoadRules(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("file-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HOOK_SECRET": "env-secret-0123456789", "SHORT": "fifteen-bytes!!"}
	getenv := func(k string) string { return env[k] }
	load := func(t *testing.T, rules string) ([]Rule, error) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "rules.json")
		if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := LoadRules(path, getenv)
		return r.Webhooks, err
	}

	t.Run("valid", func(t *testing.T) {
		rules, err := load(t, fmt.Sprintf(`{"webhooks": [
			{"name": "er-pager", "url": "https://pager.example/hook?k=1", "secret_env": "HOOK_SECRET", "min_level": "stat", "modalities": ["CT"], "phi": true},
			{"name": "ris_2", "url": "http://ris.example:8080/in", "secret_file": %q, "findings": ["nodule"], "called_aes": ["ER_SCP"]}
		]}`, secretFile))
		if err != nil {
			t.Fatal(err)
		}
		if len(rules) != 2 {
			t.Fatalf("%d rules", len(rules))
		}
		a, b := rules[0], rules[1]
		// The secret file's trailing newline is not part of the secret.
		if string(a.secret) != env["HOOK_SECRET"] || string(b.secret) != "file-secret-0123456789" {
			t.Errorf("secrets %q %q", a.secret, b.secret)
		}
		if a.MinLevel != "STAT" || a.minLevel.String() != "STAT" || !a.PHI || !slices.Equal(a.Modalities, []string{"CT"}) {
			t.Errorf("rule %+v", a)
		}
		// min_level defaults to URGENT.
		if b.MinLevel != events.TriageUrgent || b.minLevel.String() != "URGENT" || b.PHI ||
			!slices.Equal(b.Findings, []string{"nodule"}) || !slices.Equal(b.CalledAEs, []string{"ER_SCP"}) {
			t.Errorf("rule %+v", b)
		}
	})

	tests := []struct {
		name, rules, want string
	}{
		{"no secret", `{"webhooks": [{"name": "a", "url": "https://x.example/"}]}`, "signing secret"},
		{"unset secret variable", `{"webhooks": [{"name": "a", "url": "https://x.example/", "secret_env": "UNSET"}]}`, "have 0"},
		{"short secret", `{"webhooks": [{"name": "a", "url": "https://x.example/", "secret_env": "SHORT"}]}`, "want 16 bytes at least, have 15"},
		{"missing secret file", `{"webhooks": [{"name": "a", "url": "https://x.example/", "secret_file": "/nonexistent/secret"}]}`, "secret_file"},
		{"both secrets", fmt.Sprintf(`{"webhooks": [{"name": "a", "url": "https://x.example/", "secret_env": "HOOK_SECRET", "secret_file": %q}]}`, secretFile), "exclusive"},
		{"ftp URL", `{"webhooks": [{"name": "a", "url": "ftp://x.example/", "secret_env": "HOOK_SECRET"}]}`, "want an http or https URL"},
		{"URL without host", `{"webhooks": [{"name": "a", "url": "https:///hook", "secret_env": "HOOK_SECRET"}]}`, "want an http or https URL"},
		{"name with a dot", `{"webhooks": [{"name": "a.b", "url": "https://x.example/", "secret_env": "HOOK_SECRET"}]}`, "name: want letters"},
		{"name with a plus", `{"webhooks": [{"name": "a+b", "url": "https://x.example/", "secret_env": "HOOK_SECRET"}]}`, "name: want letters"},
		{"no name", `{"webhooks": [{"url": "https://x.example/", "secret_env": "HOOK_SECRET"}]}`, "name: want letters"},
		{"same name twice", `{"webhooks": [{"name": "a", "url": "https://x.example/", "secret_env": "HOOK_SECRET"},
			{"name": "a", "url": "https://y.example/", "secret_env": "HOOK_SECRET"}]}`, "used twice"},
		{"unknown field", `{"webhooks": [{"name": "a", "url": "https://x.example/", "secret": "inline-secret-0123456789"}]}`, "unknown field"},
		{"bad min_level", `{"webhooks": [{"name": "a", "url": "https://x.example/", "secret_env": "HOOK_SECRET", "min_level": "CRITICAL"}]}`, "min_level"},
		{"not JSON", `webhooks: []`, "invalid character"},
		{"e-mail without a server", `{"webhooks": [{"name": "a", "email": ["dr@example.org"]}]}`, "needs the smtp section"},
		{"e-mail and a URL", `{"smtp": {"addr": "mail:25", "from": "p@example.org"}, "webhooks": [{"name": "a", "email": ["dr@example.org"], "url": "https://x.example/"}]}`, "e-mail or posts"},
		{"bad recipient", `{"smtp": {"addr": "mail:25", "from": "p@example.org"}, "webhooks": [{"name": "a", "email": ["dr@"]}]}`, "email \"dr@\""},
		{"bad server", `{"smtp": {"addr": "mail", "from": "p@example.org"}, "webhooks": []}`, "host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := load(t, tt.rules)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadRules: %v (%d rules), want an error with %q", err, len(rules), tt.want)
			}
		})
	}

	t.Run("e-mail", func(t *testing.T) {
		env["SMTP_PASSWORD"] = "pw"
		path := filepath.Join(t.TempDir(), "rules.json")
		if err := os.WriteFile(path, []byte(`{"smtp": {"addr": "mail.example.org:587", "from": "pacsflow <p@example.org>", "username": "p", "password_env": "SMTP_PASSWORD"},
			"webhooks": [{"name": "desk", "email": ["Triage <triage@example.org>"], "min_level": "URGENT"}]}`), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := LoadRules(path, getenv)
		if err != nil {
			t.Fatal(err)
		}
		if r.SMTP.Addr != "mail.example.org:587" || r.SMTP.Password != "pw" || r.SMTP.Username != "p" || len(r.Webhooks) != 1 || r.Webhooks[0].receiver() != "mailto:triage@example.org" {
			t.Errorf("rules %+v", r)
		}
	})

	if _, err := LoadRules(filepath.Join(dir, "missing.json"), getenv); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := (Rule{Name: "a", URL: "https://x.example/"}).WithSecret([]byte("short")); err == nil {
		t.Error("WithSecret accepted a 5-byte secret")
	}
}

// The service refuses an unusable webhook configuration.
func TestWebhookConfigChecked(t *testing.T) {
	if _, err := New(context.Background(), nil, Config{Objects: objects{}, Webhooks: WebhookConfig{Attempts: -1}}); err == nil {
		t.Error("New accepted -1 attempts")
	}
}

// E-mail rules: the same matching, retries and refusals as webhooks, over
// SMTP; without PHI the mail names the study and its level only.
func TestEmailRule(t *testing.T) {
	tests := []struct {
		name  string
		codes []int
		state string
	}{
		{"accepted", []int{250}, DeliveryDelivered},
		{"greylisted, then accepted", []int{451, 250}, DeliveryDelivered},
		{"refused", []int{550}, DeliveryFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := smtptest.Start(t, func(n int) int { return tt.codes[min(n, len(tt.codes))-1] })
			r, err := Rule{Name: "desk", Email: []string{"Triage Desk <triage@example.org>"}, MinLevel: "STAT"}.Checked()
			if err != nil {
				t.Fatal(err)
			}
			cfg := webhookConfig(5, r)
			cfg.Webhooks.SMTP = mailer.Config{Addr: srv.Addr, From: "pacsflow <pacsflow@example.org>"}
			f := newWebhookFixture(t, cfg)
			s := f.newStudy(1, "", time.Now().UTC())
			f.publish(s.received(1))
			f.waitEntry(s.uid, "listed", func(*Entry) bool { return true })
			routine := s.results(1, "ROUTINE", 0.1)[2]
			routine.ID += "/routine"
			f.publish(routine) // below the rule's level: no mail
			stat := s.results(1, "STAT", 0.95)[2]
			waitFor(t, "the triages settled", f.webhooksSettled(f.publishSeq(stat)))

			msgs := srv.Messages()
			if len(msgs) != len(tt.codes) {
				t.Fatalf("%d messages, want %d", len(msgs), len(tt.codes))
			}
			m := msgs[len(msgs)-1]
			if strings.Join(m.To, ",") != "triage@example.org" || !strings.Contains(m.Data, "Subject: [pacsflow] STAT study "+s.uid+"\n") ||
				!strings.Contains(m.Data, "Pacsflow-Delivery: "+deliveryID(stat, "desk")+"\n") || !strings.Contains(m.Data, "Study Instance UID: "+s.uid) {
				t.Errorf("mail to %v:\n%s", m.To, m.Data)
			}
			if strings.Contains(m.Data, "DOE") || strings.Contains(m.Data, "JANE") {
				t.Errorf("mail without PHI names the patient:\n%s", m.Data)
			}
			recs := f.deliveries("")
			if len(recs) != 1 || recs[0].State != tt.state || !slices.Equal(statuses(recs[0]), tt.codes) || recs[0].URL != "mailto:triage@example.org" {
				t.Errorf("delivery log %+v, want %s with %v", recs, tt.state, tt.codes)
			}
			if dl := f.deadLetters(); (tt.state == DeliveryFailed) != (len(dl) == 1) {
				t.Errorf("%d dead letters", len(dl))
			}
		})
	}
}
