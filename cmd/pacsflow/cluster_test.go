package main_test

// Fault tests on a local cluster like the one scripts/cluster.sh runs:
// three nats-server processes (built from the nats-server module that
// go.mod requires) clustered on loopback, `pacsflow ingest` and `pacsflow
// understand` processes pointed at all three with R3 streams, buckets and
// object store. Nodes and services are killed with SIGKILL while they
// work; what a sender was told is safe must be, and every study must get
// one result set.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
)

var (
	clusterSeed       = flag.Uint64("cluster-seed", 0, "seed of TestCluster's kill points; 0 takes one from the clock")
	clusterKillCycles = flag.Int("cluster-kill-cycles", 4, "kill -9 cycles of TestCluster/IngestKillLoop (bench/cluster-kill.sh runs 100)")
)

// TestCluster runs the fault tests on 3-node clusters (a fresh one each).
// They are subtests so that pacsflow and nats-server are built once for
// all of them: -run TestCluster/NodeLoss runs one.
func TestCluster(t *testing.T) {
	requireTools(t, "storescu")
	bin := buildPacsflow(t)
	natsBin := buildNATSServer(t)
	seed := *clusterSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (again with: go test -run TestCluster ./cmd/pacsflow -cluster-seed=%d)", seed, seed)
	t.Run("NodeLoss", func(t *testing.T) { testClusterNodeLoss(t, bin, natsBin, rand.New(rand.NewPCG(seed, 1))) })
	t.Run("IngestKillLoop", func(t *testing.T) { testClusterIngestKillLoop(t, bin, natsBin, rand.New(rand.NewPCG(seed, 2))) })
	t.Run("UnderstandKill", func(t *testing.T) { testClusterUnderstandKill(t, bin, natsBin) })
}

// buildNATSServer builds nats-server from the module go.mod requires, so
// that the cluster runs the server version pacsflow embeds.
func buildNATSServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	return bin
}

// natsNode is one server of a natsCluster.
type natsNode struct {
	name                   string
	client, route, monitor string // loopback ports
	conf                   string
	proc                   *process
	runs                   []*process // every start, for the logs
	down                   bool       // killed on purpose
}

func (n *natsNode) url() string { return "nats://127.0.0.1:" + n.client }

// natsCluster is three nats-server processes with JetStream, clustered on
// loopback.
type natsCluster struct {
	bin   string
	nodes []*natsNode
}

// startNATSCluster starts a 3-node cluster on free loopback ports and
// returns once it is ready (see waitReady). A port picked free may be
// taken before the server binds it: then the node exits and the cluster is
// started again on other ports.
func startNATSCluster(t *testing.T, bin string) *natsCluster {
	t.Helper()
	c := &natsCluster{bin: bin}
	// The servers' logs go to the test's artifacts if it fails (kept with
	// go test -artifacts).
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.nodes {
			var log strings.Builder
			for _, p := range n.runs {
				log.WriteString(p.stderr.String())
			}
			path := filepath.Join(t.ArtifactDir(), "nats-"+n.name+".log")
			if err := os.WriteFile(path, []byte(log.String()), 0o644); err != nil {
				t.Log(err)
				continue
			}
			t.Logf("nats-server %s's log: %s", n.name, path)
		}
	})
	for attempt := 1; ; attempt++ {
		dir := t.TempDir()
		ports := distinctFreePorts(t, 9)
		c.nodes = nil
		for i := range 3 {
			n := &natsNode{name: fmt.Sprintf("n%d", i+1), client: ports[3*i], route: ports[3*i+1], monitor: ports[3*i+2], conf: filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1))}
			c.nodes = append(c.nodes, n)
		}
		var routes []string
		for _, n := range c.nodes {
			routes = append(routes, "nats-route://127.0.0.1:"+n.route)
		}
		for _, n := range c.nodes {
			// max_payload as the embedded server's (natsserver.Config), so
			// that large study manifests fit.
			conf := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\nmax_payload: 8MB\n"+
				"jetstream { store_dir: %q }\n"+
				"cluster {\n  name: pacsflow-test\n  listen: 127.0.0.1:%s\n  routes: [%s]\n}\n",
				n.name, n.client, n.monitor, filepath.Join(dir, n.name), n.route, strings.Join(routes, ", "))
			if err := os.WriteFile(n.conf, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			c.startNode(t, n)
		}
		leader, err := c.waitReady()
		if err == nil {
			t.Logf("NATS cluster up: %s; JetStream meta leader %s", c.urls(), leader)
			return c
		}
		for _, n := range c.nodes {
			_ = n.proc.cmd.Process.Kill()
			<-n.proc.done
		}
		var exit *nodeExitedError
		if !errors.As(err, &exit) || attempt == 3 {
			t.Fatalf("NATS cluster (attempt %d): %v", attempt, err)
		}
		t.Logf("NATS cluster attempt %d failed, trying other ports: %v", attempt, err)
	}
}

// distinctFreePorts returns n loopback ports that were free a moment ago,
// all different.
func distinctFreePorts(t *testing.T, n int) []string {
	t.Helper()
	var ports []string
	for len(ports) < n {
		if p := freePort(t); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports
}

// urls are the client URLs of the nodes not killed, comma-separated as
// pacsflow's --nats-url and nats.Connect take them.
func (c *natsCluster) urls() string {
	var out []string
	for _, n := range c.nodes {
		if !n.down {
			out = append(out, n.url())
		}
	}
	return strings.Join(out, ",")
}

// allURLs are the client URLs of every node, killed or not: what the
// services are configured with.
func (c *natsCluster) allURLs() string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.url())
	}
	return strings.Join(out, ",")
}

// connect connects to the nodes not killed; the connection is closed at
// the end of the test. Its asynchronous errors are dropped: they are the
// nodes killed on purpose (nats.go prints them to stderr by default).
func (c *natsCluster) connect(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(c.urls(), nats.Name("pacsflow-test"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("connect to %s: %v", c.urls(), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// kill kills a node with SIGKILL.
func (c *natsCluster) kill(t *testing.T, n *natsNode) {
	t.Helper()
	if err := n.proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-n.proc.done
	n.down = true
}

// startNode starts a node with its configuration and store.
func (c *natsCluster) startNode(t *testing.T, n *natsNode) {
	t.Helper()
	n.proc = start(t, c.bin, "-c", n.conf)
	n.runs = append(n.runs, n.proc)
	n.down = false
}

// restart starts a killed node again with its configuration and store,
// and waits until the whole cluster is healthy again (which includes the
// node having caught up with every stream).
func (c *natsCluster) restart(t *testing.T, n *natsNode) {
	t.Helper()
	c.startNode(t, n)
	if _, err := c.waitReady(); err != nil {
		t.Fatalf("after restarting %s: %v", n.name, err)
	}
}

// nodeExitedError says a node exited while the cluster was expected up.
type nodeExitedError struct {
	node string
	err  error
	log  string
}

func (e *nodeExitedError) Error() string {
	return fmt.Sprintf("nats-server %s exited (%v):\n%s", e.node, e.err, tail(e.log, 3000))
}

// waitReady waits until every node not killed is healthy (/healthz: it
// runs, has a JetStream meta leader and is current on every stream and
// consumer), knows a leader for every stream and durable consumer, and all
// name the same meta leader, which it returns.
func (c *natsCluster) waitReady() (string, error) {
	deadline := time.Now().Add(waitTimeout)
	for {
		leader, err := c.ready()
		if err == nil {
			return leader, nil
		}
		for _, n := range c.nodes {
			if !n.down && exited(n.proc) {
				return "", &nodeExitedError{node: n.name, err: n.proc.err, log: n.proc.stderr.String()}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("not ready within %s: %v", waitTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *natsCluster) ready() (string, error) {
	leader := ""
	for _, n := range c.nodes {
		if n.down {
			continue
		}
		if code, body, err := monitorGet(n, "/healthz"); err != nil || code != http.StatusOK {
			return "", fmt.Errorf("%s /healthz: %d %s %v", n.name, code, body, err)
		}
		l, leaderless, err := jetStreamLeaders(n)
		switch {
		case err != nil:
			return "", err
		case leaderless != "":
			return "", fmt.Errorf("%s: %s has no leader yet", n.name, leaderless)
		case leader != "" && l != leader:
			return "", fmt.Errorf("%s names meta leader %s, another node %s", n.name, l, leader)
		}
		leader = l
	}
	return leader, nil
}

// jetStreamLeaders returns the JetStream meta leader a node knows of (an
// error while it knows none) and the first stream or durable consumer it
// knows without a leader ("" if none). Ready means none: /healthz passes
// before every stream has elected a leader after a restart, and a
// JetStream API request that reaches a stream without one goes unanswered
// until the client's timeout, which would fail a service's start for a
// reason that is not the test's.
func jetStreamLeaders(n *natsNode) (string, string, error) {
	type cluster struct {
		Leader string `json:"leader"`
	}
	var jsz struct {
		Meta     *cluster `json:"meta_cluster"`
		Accounts []struct {
			Streams []struct {
				Name      string   `json:"name"`
				Cluster   *cluster `json:"cluster"`
				Consumers []struct {
					Name   string `json:"name"`
					Config struct {
						Durable string `json:"durable_name"`
					} `json:"config"`
					Cluster *cluster `json:"cluster"`
				} `json:"consumer_detail"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	code, body, err := monitorGet(n, "/jsz?accounts=true&streams=true&consumers=true&config=true")
	if err == nil && code == http.StatusOK {
		err = json.Unmarshal(body, &jsz)
	}
	switch {
	case err != nil:
		return "", "", fmt.Errorf("%s /jsz: %v", n.name, err)
	case code != http.StatusOK:
		return "", "", fmt.Errorf("%s /jsz: %d %s", n.name, code, body)
	case jsz.Meta == nil || jsz.Meta.Leader == "":
		return "", "", fmt.Errorf("%s knows no JetStream meta leader yet", n.name)
	}
	for _, a := range jsz.Accounts {
		for _, s := range a.Streams {
			if s.Cluster == nil || s.Cluster.Leader == "" {
				return jsz.Meta.Leader, "stream " + s.Name, nil
			}
			for _, c := range s.Consumers {
				// Ephemeral consumers (KV watchers) live on one node and go
				// with it; durable ones must be served.
				if c.Config.Durable != "" && (c.Cluster == nil || c.Cluster.Leader == "") {
					return jsz.Meta.Leader, "consumer " + c.Name + " of stream " + s.Name, nil
				}
			}
		}
	}
	return jsz.Meta.Leader, "", nil
}

// monitorGet GETs a path of a node's monitoring port; errors are returned,
// not fatal, since nodes come and go in these tests.
func monitorGet(n *natsNode, path string) (int, []byte, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	res, err := c.Get("http://127.0.0.1:" + n.monitor + path)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

// roles says which node leads what, and which node a named client is
// connected to: logged, so that a run's result can be read against where
// the kill fell.
func (c *natsCluster) roles(t *testing.T, js jetstream.JetStream, client string) string {
	t.Helper()
	var parts []string
	for _, n := range c.nodes {
		if n.down {
			continue
		}
		if l, _, err := jetStreamLeaders(n); err == nil {
			parts = append(parts, "meta leader "+l)
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		if info.Cluster != nil {
			parts = append(parts, fmt.Sprintf("%s leader %s", info.Config.Name, info.Cluster.Leader))
		}
	}
	if err := streams.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	for _, n := range c.nodes {
		if !n.down && n.serves(client) {
			parts = append(parts, client+" connected to "+n.name)
		}
	}
	return strings.Join(parts, "; ")
}

// serves tells whether a client (by connection name) is connected to the
// node, from its /connz.
func (n *natsNode) serves(client string) bool {
	var connz struct {
		Conns []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	code, body, err := monitorGet(n, "/connz?limit=1024")
	if err != nil || code != http.StatusOK || json.Unmarshal(body, &connz) != nil {
		return false
	}
	for _, c := range connz.Conns {
		if c.Name == client {
			return true
		}
	}
	return false
}

// clusterIngestArgs are the arguments of `pacsflow ingest` on the cluster:
// R3, free loopback ports, a short quiet period and a free-space threshold
// this machine's disk always meets (as upArgs).
func clusterIngestArgs(c *natsCluster, data string) []string {
	return []string{"ingest", "--nats-url", c.allURLs(), "--replicas", "3", "--data", data,
		"--dicom-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--quiet-period", upQuiet.String(), "--min-free-bytes", "1048576"}
}

// logOnFailure logs the end of a process's output if the test fails, so
// that a failure can be read against what the process did.
func logOnFailure(t *testing.T, p *process) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s %s, its output:\n%s\n%s", p.name, strings.Join(p.cmd.Args[1:], " "), tail(p.stdout.String(), 2000), tail(p.stderr.String(), 30000))
		}
	})
}

// sopUIDRE finds the SOP Instance UIDs in a `storescu -d` log.
var sopUIDRE = regexp.MustCompile(`Affected SOP Instance UID\s*:\s*(\S+)`)

// mentioned returns the SOP Instance UIDs a storescu log names so far:
// those whose C-STORE request was sent.
func mentioned(log string) map[string]bool {
	out := map[string]bool{}
	for _, m := range sopUIDRE.FindAllStringSubmatch(log, -1) {
		out[m[1]] = true
	}
	return out
}

// scuRun is one storescu association and what it was told.
type scuRun struct {
	proc *process
	ok   []string // SOP Instance UIDs answered Success
	err  error    // storescu's exit error
}

// testClusterNodeLoss: `pacsflow ingest` on the cluster receives two
// studies from storescu, each over several associations, and one NATS node
// is killed with SIGKILL during each:
//
//   - first a node the ingest process is not connected to, made the leader
//     of the streams ingest writes to (object store, events, both KV
//     buckets): the client sees no disconnection, only leaders vanishing;
//   - then, once that node is back and has caught up, the node the ingest
//     process is connected to: the client must fail over.
//
// Every instance answered Success is stored with its pacs.instance.stored
// event; what failed is sent again until it succeeds, and then each study
// is whole, in its events and in its manifests, reported by the quiet
// period. Then the whole cluster and ingest are killed and restarted, and
// everything is still there. The recovery (from the kill to the first
// Success of an instance sent after it) is logged.
func testClusterNodeLoss(t *testing.T, bin, natsBin string, rng *rand.Rand) {
	c := startNATSCluster(t, natsBin)
	data := t.TempDir()
	ing := startClusterIngest(t, bin, c, data)
	js := c.connect(t)
	const per = 15 // instances per association

	// Fault 1: the leaders' node, not the client's.
	home := c.clientNode(t, "pacsflow-ingest")
	victim := c.nodes[0]
	if victim == home {
		victim = c.nodes[1]
	}
	for _, stream := range []string{"OBJ_pacsflow-instances", "PACSFLOW", "KV_pacsflow-studies", "KV_pacsflow-instance-registry"} {
		c.moveLeader(t, js, stream, victim)
	}
	t.Logf("fault 1, before: %s", c.roles(t, js, "pacsflow-ingest"))
	study1 := dicomtest.Study(4, per, 8<<10)
	all1, recovery1 := sendThroughKill(t, c, victim, ing, study1, per, 2+rng.IntN(per-4))
	t.Logf("fault 1, after: %s", c.roles(t, c.connect(t), "pacsflow-ingest"))
	checkNoStoreInProgress(t, ing)
	checkStudyStored(t, c.connect(t), study1, all1)
	explainFailure(t, ing)

	// Fault 2: the client's node, once the first is back and current.
	c.restart(t, victim)
	home = c.clientNode(t, "pacsflow-ingest")
	t.Logf("fault 2, before: %s", c.roles(t, c.connect(t), "pacsflow-ingest"))
	study2 := dicomtest.Study(2, per, 8<<10)
	all2, recovery2 := sendThroughKill(t, c, home, ing, study2, per, 2+rng.IntN(per-4))
	t.Logf("fault 2, after: %s", c.roles(t, c.connect(t), "pacsflow-ingest"))
	checkNoStoreInProgress(t, ing)
	checkStudyStored(t, c.connect(t), study2, all2)
	explainFailure(t, ing)
	t.Logf("recovery: %s after killing the leaders' node (%s), %s after killing the client's node (%s)",
		recovery1.Round(time.Millisecond), victim.name, recovery2.Round(time.Millisecond), home.name)

	// Everything killed (the two nodes left at once) and restarted: what
	// was acknowledged is still there.
	if err := ing.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-ing.done
	for _, n := range c.nodes {
		if !n.down {
			c.kill(t, n)
		}
	}
	restarted := time.Now()
	for _, n := range c.nodes {
		c.startNode(t, n)
	}
	if _, err := c.waitReady(); err != nil {
		t.Fatalf("after restarting the whole cluster: %v", err)
	}
	t.Logf("whole cluster killed and restarted: ready after %s", time.Since(restarted).Round(time.Millisecond))
	ing = startClusterIngest(t, bin, c, data)
	js = c.connect(t)
	checkStudyStored(t, js, study1, all1)
	checkStudyStored(t, js, study2, all2)
	ing.interrupt(t)
}

// sendThroughKill sends ins to the ingest process over associations of per
// instances each, one after the other, and kills node once the second
// association has had killAfter responses. Then it sends again what was
// not answered Success, as a modality would, until everything is. It
// returns the SOP Instance UIDs answered Success (all of ins) and the
// recovery: from the kill to the first Success of an instance whose
// request was sent after it.
func sendThroughKill(t *testing.T, c *natsCluster, node *natsNode, ing *pipeline, ins []dicomtest.Instance, per, killAfter int) (map[string]bool, time.Duration) {
	t.Helper()
	var (
		runs     []*scuRun
		killedAt time.Time
		before   = map[string]bool{} // requests sent before the kill
		recovery time.Duration
	)
	// watch notes the first Success of a request sent after the kill;
	// called every few milliseconds while storescu runs.
	watch := func() {
		if killedAt.IsZero() || recovery > 0 {
			return
		}
		for _, r := range runs {
			for _, sop := range successes(t, r.proc) {
				if !before[sop] {
					recovery = time.Since(killedAt)
					return
				}
			}
		}
	}
	send := func(files []string, kill bool) *scuRun {
		r := &scuRun{proc: storeSCU(t, ing.dicomAddr, files, "-d")}
		runs = append(runs, r)
		for !exited(r.proc) {
			if kill && killedAt.IsZero() && strings.Count(r.proc.stderr.String(), "C-STORE RSP") >= killAfter {
				for _, r := range runs {
					for sop := range mentioned(r.proc.stderr.String()) {
						before[sop] = true
					}
				}
				c.kill(t, node)
				killedAt = time.Now()
			}
			watch()
			time.Sleep(2 * time.Millisecond)
		}
		watch()
		r.err = r.proc.wait(t)
		r.ok = successes(t, r.proc)
		return r
	}
	ok := map[string]bool{}
	for i := 0; i*per < len(ins); i++ {
		part := ins[i*per : min((i+1)*per, len(ins))]
		r := send(writeInstances(t, part), i == 1)
		for _, sop := range r.ok {
			ok[sop] = true
		}
		note := ""
		if i == 1 {
			note = fmt.Sprintf(" (%s killed after %d responses)", node.name, killAfter)
		}
		t.Logf("association %d: %d of %d Success, storescu exit %v%s", i+1, len(r.ok), len(part), r.err, note)
	}
	if killedAt.IsZero() {
		t.Fatalf("the second association ended before %d responses: %s was never killed", killAfter, node.name)
	}
	firstRound := len(ok)
	deadline := time.Now().Add(waitTimeout)
	for attempt := 1; len(ok) < len(ins); attempt++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d re-sends over %s, %d of %d instances answered Success", attempt-1, waitTimeout, len(ok), len(ins))
		}
		var missing []dicomtest.Instance
		for _, in := range ins {
			if !ok[in.SOPInstanceUID] {
				missing = append(missing, in)
			}
		}
		r := send(writeInstances(t, missing), false)
		t.Logf("re-send %d: %d of %d Success, storescu exit %v", attempt, len(r.ok), len(missing), r.err)
		for _, sop := range r.ok {
			ok[sop] = true
		}
		if len(r.ok) < len(missing) {
			time.Sleep(time.Second) // as a modality waits before it retries
		}
	}
	if recovery == 0 {
		t.Fatal("no Success after the kill")
	}
	t.Logf("%d of %d instances answered Success before any re-send; first Success after the kill %s after it",
		firstRound, len(ins), recovery.Round(time.Millisecond))
	return ok, recovery
}

// checkNoStoreInProgress fails the test if the ingest process is still
// handling a C-STORE although every sender has finished: a handler blocked
// for good, which holds its association open, so that the study waits for
// --max-wait. Its stacks (from /debug/pprof) are logged.
func checkNoStoreInProgress(t *testing.T, ing *pipeline) {
	t.Helper()
	// A handler that is merely finishing gets a moment.
	var stuck string
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, profile := httpGet(t, ing.httpURL+"/debug/pprof/goroutine?debug=1")
		stuck = ""
		for _, g := range strings.Split(profile, "\n\n") {
			if strings.Contains(g, "(*Service).HandleStore") {
				stuck += g + "\n\n"
			}
		}
		if stuck == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if stuck != "" {
		t.Errorf("every storescu has exited, but ingest is still handling a C-STORE (its association never ends):\n%s", stuck)
	}
}

// explainFailure logs, once the test has failed, what the ingest process
// said about associations whose end it could not record: their studies
// wait for --max-wait instead of the quiet period.
func explainFailure(t *testing.T, ing *pipeline) {
	t.Helper()
	if msg := grepLines(ing.stderr.String(), "the end of the association"); t.Failed() && msg != "" {
		t.Logf("ingest on the ends of associations:\n%s", msg)
	}
}

// clientNode returns the node a client (by connection name) is connected
// to.
func (c *natsCluster) clientNode(t *testing.T, client string) *natsNode {
	t.Helper()
	var found *natsNode
	waitFor(t, client+"'s connection", func() bool {
		for _, n := range c.nodes {
			if !n.down && n.serves(client) {
				found = n
				return true
			}
		}
		return false
	})
	return found
}

// moveLeader makes node the leader of a stream: a leader stepdown that
// names it as the preferred successor, retried until the stream reports
// it.
func (c *natsCluster) moveLeader(t *testing.T, js jetstream.JetStream, stream string, node *natsNode) {
	t.Helper()
	req, err := json.Marshal(map[string]any{"placement": map[string]string{"preferred": node.name}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	waitFor(t, stream+"'s leader to move to "+node.name, func() bool {
		info, err := st.Info(ctx)
		switch {
		case err != nil || info.Cluster == nil || info.Cluster.Leader == "":
			return false // an election in progress
		case info.Cluster.Leader == node.name:
			return true
		}
		// A refused or lost stepdown is simply asked again.
		_, _ = js.Conn().Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 10*time.Second)
		time.Sleep(200 * time.Millisecond)
		return false
	})
}

// clusterStore opens ingest's object store on the cluster as a reader
// does, naming no replicas, and checks that the bucket stays R3: opening
// it must not bring it down to one replica, which the next node loss
// would then take away.
func clusterStore(t *testing.T, js jetstream.JetStream) storage.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	s, err := objstore.New(ctx, js, objstore.Config{Bucket: "pacsflow-instances"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "OBJ_pacsflow-instances")
	if err != nil {
		t.Fatal(err)
	}
	if r := st.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("the instances bucket has %d replicas after a reader opened it, want 3", r)
	}
	return s
}

// checkStudyStored checks, through js, that every instance of ins in want
// has exactly one pacs.instance.stored event whose object holds what was
// sent, that every such event names an object that does, and that the
// study's manifests (pacs.study.received, then pacs.study.updated for
// instances stored after it) list every instance of ins once.
func checkStudyStored(t *testing.T, js jetstream.JetStream, ins []dicomtest.Instance, want map[string]bool) {
	t.Helper()
	study := ins[0].StudyInstanceUID
	type found struct {
		stored   map[string][]*events.Received // SOP Instance UID -> its instance events
		listed   map[string]int                // SOP Instance UID -> manifests listing it
		received int                           // pacs.study.received events
		updated  int                           // pacs.study.updated events
		trigger  string                        // what made ingest report the study
	}
	scan := func(evs []*events.Received) found {
		f := found{stored: map[string][]*events.Received{}, listed: map[string]int{}}
		for _, e := range evs {
			switch e.Type {
			case events.TypeInstanceStored:
				if d := decodeData[events.InstanceStored](t, e); d.Study.StudyInstanceUID == study {
					f.stored[d.SOPInstanceUID] = append(f.stored[d.SOPInstanceUID], e)
				}
			case events.TypeStudyReceived, events.TypeStudyUpdated:
				if e.Subject != study {
					continue
				}
				d := decodeData[events.StudyReceived](t, e)
				if e.Type == events.TypeStudyReceived {
					f.received++
					f.trigger = d.Trigger
				} else {
					f.updated++
				}
				for _, s := range d.Series {
					for _, ref := range s.Instances {
						f.listed[ref.SOPInstanceUID]++
					}
				}
			}
		}
		return f
	}
	complete := func(f found) bool {
		for _, in := range ins {
			if (want[in.SOPInstanceUID] && len(f.stored[in.SOPInstanceUID]) == 0) || f.listed[in.SOPInstanceUID] == 0 {
				return false
			}
		}
		return f.received > 0
	}
	// Wait for the study's report, then check in detail whatever came:
	// a lost instance is named rather than timed out on.
	deadline := time.Now().Add(eventTimeout)
	evs := readEvents(t, js)
	for f := scan(evs); !complete(f) && time.Now().Before(deadline); f = scan(evs) {
		time.Sleep(100 * time.Millisecond)
		evs = readEvents(t, js)
	}
	f := scan(evs)
	store := clusterStore(t, js)
	sent := map[string]dicomtest.Instance{}
	for _, in := range ins {
		sent[in.SOPInstanceUID] = in
	}
	lost := 0
	for _, in := range ins {
		sop := in.SOPInstanceUID
		evs := f.stored[sop]
		switch {
		case len(evs) == 0 && want[sop]:
			lost++
			t.Errorf("%s: storescu saw Success, but there is no pacs.instance.stored event", sop)
		case len(evs) > 1:
			var ids []string
			for _, e := range evs {
				ids = append(ids, e.ID)
			}
			t.Errorf("%s: %d pacs.instance.stored events for the same bytes (IDs %v): JetStream's deduplication did not hold", sop, len(evs), ids)
		}
		if n := f.listed[sop]; n != 1 && f.received > 0 {
			t.Errorf("%s: listed by %d of the study's manifests, want 1", sop, n)
		}
	}
	for sop, evs := range f.stored {
		in, known := sent[sop]
		for _, e := range evs {
			d := decodeData[events.InstanceStored](t, e)
			_, ds, err := readStored(store, d.Object)
			switch {
			case !known:
				t.Errorf("an event for %s, which was never sent", sop)
			case err != nil:
				t.Errorf("event %s: %v", e.ID, err)
			case !bytes.Equal(ds, in.DataSet()):
				t.Errorf("event %s: the stored data set differs from what was sent", e.ID)
			}
		}
	}
	if f.received != 1 {
		t.Errorf("%d pacs.study.received events for study %s within %s of the last Success, want 1", f.received, study, eventTimeout)
	} else if f.trigger != "quiet-period" {
		t.Errorf("the study was reported by %s, want quiet-period", f.trigger)
	}
	t.Logf("%d instances, %d with events, %d lost; study reported in %d received and %d updated events", len(ins), len(f.stored), lost, f.received, f.updated)
}

// testClusterIngestKillLoop: `pacsflow ingest` on the cluster is killed
// with SIGKILL at a random point while storescu sends, and started again,
// a few times; a study whose association broke is sent again in the next
// cycle, as a modality would. Then every instance any storescu saw
// answered Success is stored with its event; duplicates (instances stored
// before the kill and sent again) are allowed.
func testClusterIngestKillLoop(t *testing.T, bin, natsBin string, rng *rand.Rand) {
	cycles := *clusterKillCycles
	c := startNATSCluster(t, natsBin)
	data := t.TempDir()
	sent := map[string]dicomtest.Instance{} // every instance sent, by SOP Instance UID
	acked := map[string]bool{}              // those storescu saw Success for
	var retry []dicomtest.Instance
	var restarts []time.Duration // from starting ingest to its first storable association
	for cycle := range cycles {
		started := time.Now()
		ing := startClusterIngest(t, bin, c, data)
		restarts = append(restarts, time.Since(started))
		batch := append(slices.Clone(retry), dicomtest.Study(2, 10, 16<<10)...)
		for _, in := range batch {
			sent[in.SOPInstanceUID] = in
		}
		ok, at, scuErr := killMidSend(t, ing, batch, rng, 10*time.Millisecond)
		got := map[string]bool{}
		for _, sop := range ok {
			acked[sop], got[sop] = true, true
		}
		retry = nil
		for _, in := range batch {
			if !got[in.SOPInstanceUID] {
				retry = append(retry, in)
			}
		}
		t.Logf("cycle %d: killed %s; storescu: %d of %d Success, exit %v", cycle+1, at, len(ok), len(batch), scuErr)
	}

	js := c.connect(t)
	store := clusterStore(t, js)
	withEvents, duplicates, lost := reconcileKills(t, js, store, sent, acked)
	slices.Sort(restarts)
	t.Logf("%d kill -9 cycles: %d instances sent, %d answered Success, %d with events (%d repeated events of the same bytes), %d lost; ingest ready again after a kill in %s median, %s at most",
		cycles, len(sent), len(acked), withEvents, duplicates, lost, restarts[len(restarts)/2].Round(time.Millisecond), restarts[len(restarts)-1].Round(time.Millisecond))
}

// understandLine is what `pacsflow understand` prints once it consumes.
var understandLine = regexp.MustCompile(`(?m)^understand: results on `)

// startClusterUnderstand starts `pacsflow understand` on the cluster with
// the reference model, and returns once it consumes. It names no
// --replicas: its bucket takes the event stream's three.
func startClusterUnderstand(t *testing.T, bin string, c *natsCluster, extra ...string) *process {
	t.Helper()
	args := append([]string{"understand", "--nats-url", c.allURLs(), "--http-addr", "",
		"--model", referenceModel(t), "--batch-size", "8",
		"--ack-wait", "3s"}, // the studies of a killed process come back after 3 s
		extra...)
	p := startService(t, bin, args, understandLine)
	logOnFailure(t, p)
	waitStreams(t, c)
	return p
}

// startService runs `pacsflow ARGS...` and returns once its output matches
// ready.
func startService(t *testing.T, bin string, args []string, ready *regexp.Regexp) *process {
	t.Helper()
	p := start(t, bin, args...)
	deadline := time.Now().Add(waitTimeout)
	for !ready.MatchString(p.stdout.String()) {
		if exited(p) {
			t.Fatalf("pacsflow %s exited (%v) before it ran\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), p.err, p.stdout.String(), p.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("pacsflow %s did not start within %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), waitTimeout, p.stdout.String(), p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// startClusterIngest starts `pacsflow ingest` on the cluster (see
// startService) and returns it once it listens, with its addresses.
func startClusterIngest(t *testing.T, bin string, c *natsCluster, data string) *pipeline {
	t.Helper()
	args := clusterIngestArgs(c, data)
	p := &pipeline{process: startService(t, bin, args, storageLineRE), bin: bin, args: args}
	out := p.stdout.String()
	for _, f := range []struct {
		re  *regexp.Regexp
		dst *string
	}{{dicomLineRE, &p.dicomAddr}, {natsLineRE, &p.natsURL}, {httpLineRE, &p.httpURL}} {
		m := f.re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("pacsflow ingest: no line matching %s in its output:\n%s", f.re, out)
		}
		*f.dst = m[1]
	}
	logOnFailure(t, p.process)
	waitStreams(t, c)
	return p
}

// waitStreams waits until the streams a service just created have leaders:
// ingest accepts associations as soon as it runs, and on a fresh cluster
// its first instances would get A700 while the new streams elect theirs
// ("no response from stream").
func waitStreams(t *testing.T, c *natsCluster) {
	t.Helper()
	if _, err := c.waitReady(); err != nil {
		t.Fatal(err)
	}
}

// testClusterUnderstandKill: a backlog of 8 synthetic studies on the
// cluster is analyzed by two `pacsflow understand` processes; one is
// killed with SIGKILL mid-batch, while the other works, and started again.
// The victim's batches wait long for more images (--batch-wait), so that
// when it is killed it holds studies whose results it has not published:
// they come back to the consumer after --ack-wait. Every study ends with
// exactly one findings, draft report and triage event.
func testClusterUnderstandKill(t *testing.T, bin, natsBin string) {
	const n = 8
	_, files, truth := synthStudies(t, bin, n)
	c := startNATSCluster(t, natsBin)
	ing := startClusterIngest(t, bin, c, t.TempDir())
	js := c.connect(t)
	storeSCU(t, ing.dicomAddr, files).mustSucceed(t)
	waitEvents(t, js, "the study events", countType(events.TypeStudyReceived, n))

	ctx, cancel := context.WithTimeout(context.Background(), 5*eventTimeout)
	defer cancel()
	// consumerInfo describes the understand consumer, which its first
	// process creates once it runs.
	consumerInfo := func() (*jetstream.ConsumerInfo, error) {
		cons, err := js.Consumer(ctx, "PACSFLOW", "understand")
		if err != nil {
			return nil, err
		}
		return cons.Info(ctx)
	}
	consumer := func() *jetstream.ConsumerInfo {
		t.Helper()
		info, err := consumerInfo()
		if err != nil {
			t.Fatalf("the understand consumer: %v", err)
		}
		return info
	}
	// The victim first, alone: the studies it takes wait in its batcher.
	victim := startClusterUnderstand(t, bin, c, "--batch-size", "64", "--batch-wait", "1m")
	waitFor(t, "the first process to take studies", func() bool {
		info, err := consumerInfo()
		return err == nil && info.NumAckPending > 0
	})
	other := startClusterUnderstand(t, bin, c)
	waitEvents(t, js, "a first triage from the second process", countType(events.TypeAITriage, 1))
	held := consumer().NumAckPending
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	<-victim.done
	triagedAtKill := len(ofType(readEvents(t, js), events.TypeAITriage))
	startClusterUnderstand(t, bin, c)
	triaged := func(evs []*events.Received) bool {
		studies := map[string]bool{}
		for _, e := range ofType(evs, events.TypeAITriage) {
			studies[e.Subject] = true
		}
		return len(studies) == n
	}
	waitEvents(t, js, "a triage per study", triaged)
	recovery := time.Since(killedAt)
	// Results of a study delivered again would come before the consumer
	// has nothing left pending or unacknowledged.
	waitFor(t, "the understand consumer to settle", func() bool {
		info := consumer()
		return info.NumPending == 0 && info.NumAckPending == 0
	})
	// Each delivery takes a consumer sequence number: more than one per
	// study means studies were delivered again.
	redelivered := int(consumer().Delivered.Consumer) - n
	if redelivered <= 0 {
		t.Errorf("no study was delivered again after the kill: the killed process held none")
	}
	evs := readEvents(t, js)
	res := readResults(t, evs)
	ids := map[string]map[string]bool{} // study -> IDs of its ai events
	for _, e := range evs {
		switch e.Type {
		case events.TypeAIFindings, events.TypeAIReportDraft, events.TypeAITriage:
			if ids[e.Subject] == nil {
				ids[e.Subject] = map[string]bool{}
			}
			ids[e.Subject][e.ID] = true
		}
	}
	for _, s := range truth.Studies {
		uid := s.StudyInstanceUID
		if f, r, tr := len(res.findings[uid]), len(res.reports[uid]), len(res.triages[uid]); f != 1 || r != 1 || tr != 1 || len(ids[uid]) != 3 {
			t.Errorf("study %s: %d findings, %d report, %d triage events with %d distinct IDs; want one each, 3 IDs", uid, f, r, tr, len(ids[uid]))
		}
	}
	kv, err := js.Stream(ctx, "KV_pacsflow-understand")
	if err != nil {
		t.Fatal(err)
	}
	if r := kv.CachedInfo().Config.Replicas; r != 3 {
		t.Errorf("understand's bucket has %d replicas, want the event stream's 3", r)
	}
	t.Logf("killed an understand process mid-batch: %d studies unacknowledged at the kill, %d of %d triaged; all triaged %s after the kill (ack wait 3 s); %d deliveries again",
		held, triagedAtKill, n, recovery.Round(time.Millisecond), redelivered)
	if exited(other) {
		t.Errorf("the second understand process exited: %v", other.err)
	}
	ing.interrupt(t)
}

// tail returns the end of s, at most n bytes.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
