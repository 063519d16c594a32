// Command studylatency measures pacsflow's study-completion latency: the time
// from the last C-STORE response of a study to the arrival of its
// pacs.study.received event, both taken on one clock in this process.
//
// It subscribes to pacs.study.received.> and pacs.study.updated.> on the NATS
// server of `pacsflow up`, then sends N studies (each in its own association,
// one after another) with pacsflow's DICOM client, and waits for every
// study's event. Data sets are built in memory before sending
// (internal/dicomtest: CT images, Explicit VR Little Endian, fresh UIDs).
//
//	go run ./bench/studylatency -addr 127.0.0.1:11112 -nats nats://127.0.0.1:4222 -ae PACSFLOW
//
// Modes:
//
//	back-to-back  the next study's association starts as soon as the previous
//	              one is released: several studies wait out their quiet
//	              period at once while others are still arriving
//	isolated      the next study is sent only after the previous study's event
//	              arrived: each study alone in the pipeline
//
// It prints one line per study (with -v) and a summary line:
//
//	RESULT mode=... studies=N quiet_ms=Q p50_ms=... p95_ms=... max_ms=... min_ms=... excess_p50_ms=... excess_p95_ms=... excess_max_ms=... over100=... send_ms=... release_p50_ms=...
//
// where the latencies run from the last C-STORE response to the event,
// excess_* are latencies minus the quiet period and over100 counts the studies
// whose excess passed 100 ms. It exits 1 if a study's event is missing, late
// beyond -timeout, or wrong (instance count, type, trigger, generation), or if
// any C-STORE is not answered Success.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/pacsflow/pacsflow/bench/internal/benchkit"
	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

type study struct {
	uid      string
	sets     [][]byte
	insts    []dicomtest.Instance
	start    time.Time // association requested
	last     time.Time // last C-STORE response
	released time.Time // A-RELEASE-RP received
}

type arrival struct {
	at   time.Time
	subj string
	typ  string
	ce   string // ce-subject: the Study Instance UID
	data events.StudyReceived
	err  error
}

func main() {
	addr := flag.String("addr", "127.0.0.1:11112", "DICOM address of pacsflow")
	natsURL := flag.String("nats", nats.DefaultURL, "NATS URL of pacsflow (printed by pacsflow up)")
	called := flag.String("ae", "PACSFLOW", "called AE title")
	calling := flag.String("calling-ae", "STUDYLAT", "calling AE title")
	nStudies := flag.Int("studies", 20, "number of studies")
	nInst := flag.Int("instances", 10, "instances per study")
	pixBytes := flag.Int("pixel-bytes", 524288, "pixel data bytes per instance (512x512x16-bit = 524288, like bench/corpus/small)")
	quiet := flag.Duration("quiet", 2*time.Second, "pacsflow's study quiet period (subtracted for excess_*)")
	mode := flag.String("mode", "back-to-back", "back-to-back or isolated (see the package doc)")
	timeout := flag.Duration("timeout", 60*time.Second, "how long to wait for a study's event after its association ended")
	verbose := flag.Bool("v", false, "print one line per study")
	flag.Parse()
	if *mode != "back-to-back" && *mode != "isolated" {
		fail("-mode %q: want back-to-back or isolated", *mode)
	}
	if *nStudies < 1 || *nInst < 1 {
		fail("-studies and -instances must be at least 1")
	}

	// Build every data set first, so that sending is not slowed by it.
	studies := make([]*study, *nStudies)
	for i := range studies {
		insts := dicomtest.Study(1, *nInst, *pixBytes)
		s := &study{uid: insts[0].StudyInstanceUID, insts: insts}
		for _, in := range insts {
			in.PatientID = fmt.Sprintf("LAT-%03d", i+1)
			s.sets = append(s.sets, in.DataSet())
		}
		studies[i] = s
	}
	byUID := map[string]*study{}
	for _, s := range studies {
		byUID[s.uid] = s
	}

	nc, err := nats.Connect(*natsURL, nats.Name("pacsflow-bench-studylatency"))
	if err != nil {
		fail("connect to NATS %s: %v", *natsURL, err)
	}
	defer nc.Close()
	var mu sync.Mutex
	got := map[string][]arrival{}
	notify := make(chan string, 4**nStudies)
	handler := func(m *nats.Msg) {
		a := arrival{at: time.Now(), subj: m.Subject}
		rcv, err := events.Decode(m.Subject, m.Header, m.Data)
		if err == nil {
			a.typ, a.ce = rcv.Type, rcv.Subject
			err = json.Unmarshal(rcv.Data, &a.data)
		}
		a.err = err
		key := a.ce
		if key == "" {
			key = a.data.Study.StudyInstanceUID
		}
		mu.Lock()
		got[key] = append(got[key], a)
		mu.Unlock()
		select {
		case notify <- key:
		default:
		}
	}
	for _, subj := range []string{events.SubjectStudyReceived + ".>", events.SubjectStudyUpdated + ".>"} {
		if _, err := nc.Subscribe(subj, handler); err != nil {
			fail("subscribe %s: %v", subj, err)
		}
	}
	if err := nc.Flush(); err != nil {
		fail("NATS flush: %v", err)
	}

	cfg := dimse.ClientConfig{CallingAE: *calling, CalledAE: *called}
	props := []dimse.Proposal{{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}}
	sendStart := time.Now()
	for i, s := range studies {
		if err := send(cfg, *addr, props, s); err != nil {
			fail("study %d (%s): %v", i+1, s.uid, err)
		}
		if *mode == "isolated" {
			waitFor(notify, &mu, got, []*study{s}, *timeout)
		}
	}
	sendDur := time.Since(sendStart)
	waitFor(notify, &mu, got, studies, *timeout)
	// A short grace period to catch unexpected second reports (pacs.study.updated).
	time.Sleep(200 * time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	var lat, rel, excess []float64
	bad := 0
	for i, s := range studies {
		as := got[s.uid]
		problem := ""
		switch {
		case len(as) == 0:
			problem = "no event"
		case len(as) > 1:
			problem = fmt.Sprintf("%d events (%s ...)", len(as), as[1].subj)
		case as[0].err != nil:
			problem = as[0].err.Error()
		case !strings.HasPrefix(as[0].subj, events.SubjectStudyReceived+"."):
			problem = "first event on " + as[0].subj
		case as[0].data.NumInstances != *nInst:
			problem = fmt.Sprintf("event counts %d instances, sent %d", as[0].data.NumInstances, *nInst)
		case as[0].data.Trigger != "quiet-period" || as[0].data.Generation != 1:
			problem = fmt.Sprintf("trigger %q generation %d", as[0].data.Trigger, as[0].data.Generation)
		}
		if problem != "" {
			bad++
			fmt.Fprintf(os.Stderr, "studylatency: study %d %s: %s\n", i+1, s.uid, problem)
			continue
		}
		l := ms(as[0].at.Sub(s.last))
		r := ms(s.released.Sub(s.last))
		lat, rel, excess = append(lat, l), append(rel, r), append(excess, l-ms(*quiet))
		if *verbose {
			fmt.Printf("study %2d  %s  send %6.1f ms  release +%5.1f ms  event +%7.1f ms (excess %+6.1f ms)\n",
				i+1, s.uid, ms(s.last.Sub(s.start)), r, l, l-ms(*quiet))
		}
	}
	for uidSeen := range got {
		if byUID[uidSeen] == nil {
			fmt.Fprintf(os.Stderr, "studylatency: note: event for a study not sent by this run: %s\n", uidSeen)
		}
	}
	if bad > 0 {
		fail("%d of %d studies without a correct pacs.study.received event", bad, len(studies))
	}
	over := 0
	for _, e := range excess {
		if e > 100 {
			over++
		}
	}
	fmt.Printf("RESULT mode=%s studies=%d instances=%d quiet_ms=%.0f p50_ms=%.1f p95_ms=%.1f max_ms=%.1f min_ms=%.1f excess_p50_ms=%.1f excess_p95_ms=%.1f excess_max_ms=%.1f over100=%d send_ms=%.0f release_p50_ms=%.1f\n",
		*mode, len(studies), *nInst, ms(*quiet), benchkit.Pct(lat, 50), benchkit.Pct(lat, 95), benchkit.Pct(lat, 100), benchkit.Pct(lat, 0),
		benchkit.Pct(excess, 50), benchkit.Pct(excess, 95), benchkit.Pct(excess, 100), over, ms(sendDur), benchkit.Pct(rel, 50))
}

// send stores a study over one association and releases it, recording when
// the last C-STORE response came and when the release was confirmed.
func send(cfg dimse.ClientConfig, addr string, props []dimse.Proposal, s *study) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s.start = time.Now()
	c, err := dimse.Dial(ctx, addr, cfg, props)
	if err != nil {
		return err
	}
	for i, ds := range s.sets {
		in := s.insts[i]
		res, err := c.Store(ctx, dimse.StoreRequest{AffectedSOPClassUID: in.SOPClassUID, AffectedSOPInstanceUID: in.SOPInstanceUID},
			uid.ExplicitVRLittleEndian, bytes.NewReader(ds))
		if err != nil {
			return fmt.Errorf("C-STORE %d: %w", i+1, err)
		}
		if res.Status != dimse.StatusSuccess {
			_ = c.Abort()
			return fmt.Errorf("C-STORE %d: status 0x%04X %s", i+1, uint16(res.Status), res.Comment)
		}
	}
	s.last = time.Now()
	if err := c.Release(); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	s.released = time.Now()
	return nil
}

// waitFor returns when every study in want has an event, or exits after
// timeout without one.
func waitFor(notify <-chan string, mu *sync.Mutex, got map[string][]arrival, want []*study, timeout time.Duration) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		mu.Lock()
		missing := 0
		for _, s := range want {
			if len(got[s.uid]) == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-notify:
		case <-time.After(100 * time.Millisecond):
		case <-deadline.C:
			fail("%d of %d studies without a study event %s after sending", missing, len(want), timeout)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "studylatency: FAIL: "+format+"\n", args...)
	os.Exit(1)
}
