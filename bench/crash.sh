#!/usr/bin/env bash
# Crash safety of `pacsflow up` under kill -9, outside `go test` (TestUpCrashKill9 in
# cmd/pacsflow/up_test.go runs the same scenario 20 times per backend):
#
#   bench/crash.sh [N]      N iterations (default 100) on one data folder
#
# Environment: STORAGE=fs|objectstore (default fs), INSTANCES per study (default 40),
# SEED (default: from the clock; printed, and the same SEED gives the same kill points).
#
# Each iteration starts `pacsflow up --data bench/out/crash/data`, checks the previous
# iteration (see below), then starts DCMTK's storescu (-d: its log shows every C-STORE
# response with its status and message ID) sending a new study, plus the previous study
# again if that send failed (a modality retries), and kills pacsflow with SIGKILL after a
# random number of responses plus a random delay of up to 5 ms. The SOP Instance UIDs
# whose response was Success (0x0000) are what pacsflow promised to keep. After the
# restart that follows, each of them must have a pacs.instance.stored event in JetStream
# whose object exists, holds the SHA-256 of its event and the data set that was sent. At
# the end pacsflow is restarted once more and every event's object is checked, then it is
# stopped with SIGINT, which must exit 0.
#
# Prints per iteration and in total: Successes seen by the sender, found (event and
# intact object), lost (must be 0); exits 1 if anything was lost or corrupt.
# Needs go and DCMTK (storescu). Work folder (data, sent files, logs): bench/out/crash.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-100}
STORAGE=${STORAGE:-fs}
INSTANCES=${INSTANCES:-40}
SEED=${SEED:-$(( $(date +%s%N) % 1000000007 ))}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/crash.sh [N], N a positive integer" >&2; exit 2; }
[[ $INSTANCES =~ ^[1-9][0-9]*$ ]] || { echo "INSTANCES must be a positive integer" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || { echo "SEED must be a non-negative integer" >&2; exit 2; }
case $STORAGE in fs|objectstore) ;; *) echo "STORAGE must be fs or objectstore" >&2; exit 2 ;; esac
# pacsflow reads PACSFLOW_<FLAG> from the environment: run it with the flags below only.
for v in $(compgen -v PACSFLOW_ || true); do echo "crash.sh: ignoring $v=${!v}" >&2; unset "$v"; done
export TCP_NODELAY=1 # read by DCMTK; without it each C-STORE stalls ~45 ms (Nagle + delayed ACK)
RANDOM=$SEED         # seeds bash's generator: the kill points follow from SEED

die() { echo "crash.sh: FAIL: $*" >&2; exit 1; }
for t in go storescu; do
  command -v $t >/dev/null || die "$t missing (apt-get install -y dcmtk; Go from go.dev)"
done

OUT=$ROOT/bench/out
W=$OUT/crash
BIN=$OUT/pacsflow
TOOL=$OUT/crashtool
UP=""  # pid of the running pacsflow
SCU="" # pid of the running storescu
SRC="" # temporary source folder of the checking tool
cleanup() {
  [ -n "$SCU" ] && kill "$SCU" 2>/dev/null || true
  [ -n "$UP" ] && kill -9 "$UP" 2>/dev/null || true
  [ -n "$SRC" ] && rm -rf "$SRC"
  return 0
}
trap cleanup EXIT
rm -rf "$W"
mkdir -p "$W/data" "$W/sent" "$W/logs"

# ---- build pacsflow and the helper that writes studies and checks storage ----
go build -o "$BIN" ./cmd/pacsflow
# The helper must live inside the module to use its packages; a folder whose name starts
# with '.' is left out of ./... patterns, so go vet and go test never see it.
SRC=$(mktemp -d "$OUT/.crashtool.XXXXXX")
cat >"$SRC/main.go" <<'EOF'
// Command crashtool writes test studies and checks what pacsflow stored.
//
//	crashtool gen DIR N
//	crashtool check -nats URL -storage fs|objectstore -data DIR -sent DIR [-all] ACKED...
//
// gen writes a new study of N CT instances as DIR/<SOP Instance UID>.dcm. check reads the
// pacs.instance.stored events and prints "success=S found=F lost=L bad=B": for the SOP
// Instance UIDs listed in the ACKED files, how many have an event whose object exists,
// holds the event's SHA-256 and the data set of the file sent (DIR/*/<UID>.dcm); with
// -all, bad also counts every other event whose object fails that check.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/storage/objstore"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: crashtool gen DIR N | check ..."))
	}
	var err error
	switch os.Args[1] {
	case "gen":
		err = gen(os.Args[2:])
	case "check":
		err = check(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "crashtool:", err)
	os.Exit(2)
}

func gen(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: crashtool gen DIR N")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	if err := os.MkdirAll(args[0], 0o755); err != nil {
		return err
	}
	for _, in := range dicomtest.Study(1, n, 16<<10) {
		b := part10.AppendHeader(nil, &part10.Meta{
			MediaStorageSOPClassUID: in.SOPClassUID, MediaStorageSOPInstanceUID: in.SOPInstanceUID,
			TransferSyntaxUID: uid.ExplicitVRLittleEndian, ImplementationClassUID: uid.ImplementationClassUID,
		})
		if err := os.WriteFile(filepath.Join(args[0], in.SOPInstanceUID+".dcm"), append(b, in.DataSet()...), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func check(args []string) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	url := fs.String("nats", "", "NATS URL of pacsflow up")
	backend := fs.String("storage", "fs", "fs or objectstore")
	data := fs.String("data", "", "--data of pacsflow up")
	sent := fs.String("sent", "", "folder of the folders of files sent")
	all := fs.Bool("all", false, "check the object of every event")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nc, err := nats.Connect(*url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	evs, err := instanceEvents(ctx, js)
	if err != nil {
		return err
	}
	var open func(key string) ([]byte, error)
	switch *backend {
	case "fs":
		// The files themselves: fsstore.New would clear the store's temporaries.
		open = func(key string) ([]byte, error) { return os.ReadFile(filepath.Join(*data, "instances", filepath.FromSlash(key))) }
	case "objectstore":
		s, err := objstore.New(ctx, js, objstore.Config{Bucket: "pacsflow-instances"})
		if err != nil {
			return err
		}
		open = func(key string) ([]byte, error) {
			rc, _, err := s.Open(ctx, key)
			if err != nil {
				return nil, err
			}
			defer rc.Close()
			return io.ReadAll(rc)
		}
	default:
		return fmt.Errorf("-storage %q", *backend)
	}
	// intact checks the object of an event against it and the file sent.
	intact := func(d *events.InstanceStored) error {
		b, err := open(d.Object.Key)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != d.Object.SHA256 || int64(len(b)) != d.Object.Size {
			return fmt.Errorf("object %s does not match its event", d.Object.Key)
		}
		files, _ := filepath.Glob(filepath.Join(*sent, "*", d.SOPInstanceUID+".dcm"))
		if len(files) == 0 {
			return fmt.Errorf("no file was sent for %s", d.SOPInstanceUID)
		}
		want, err := os.ReadFile(files[0])
		if err != nil {
			return err
		}
		if !bytes.Equal(dataSet(b), dataSet(want)) {
			return fmt.Errorf("object %s: the data set differs from %s", d.Object.Key, files[0])
		}
		return nil
	}
	bySOP := map[string][]*events.InstanceStored{}
	for _, d := range evs {
		bySOP[d.SOPInstanceUID] = append(bySOP[d.SOPInstanceUID], d)
	}
	success, found, lost, bad := 0, 0, 0, 0
	for _, f := range fs.Args() {
		acked, err := readLines(f)
		if err != nil {
			return err
		}
		for _, sop := range acked {
			success++
			ok := false
			for _, d := range bySOP[sop] {
				if err := intact(d); err != nil {
					fmt.Fprintf(os.Stderr, "BAD %s: %v\n", sop, err)
				} else {
					ok = true
				}
			}
			if ok {
				found++
			} else {
				lost++
				fmt.Fprintf(os.Stderr, "LOST %s: Success was answered, but no event names an intact object (%d events)\n", sop, len(bySOP[sop]))
			}
		}
	}
	if *all {
		for _, d := range evs {
			if err := intact(d); err != nil {
				bad++
				fmt.Fprintf(os.Stderr, "BAD %s: %v\n", d.SOPInstanceUID, err)
			}
		}
	}
	fmt.Printf("success=%d found=%d lost=%d bad=%d events=%d\n", success, found, lost, bad, len(evs))
	return nil
}

// instanceEvents reads every pacs.instance.stored event of the stream.
func instanceEvents(ctx context.Context, js jetstream.JetStream) ([]*events.InstanceStored, error) {
	st, err := js.Stream(ctx, "PACSFLOW")
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	var out []*events.InstanceStored
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; {
		// Asking for no more than what is left, Fetch returns once it came.
		batch, err := cons.Fetch(int(min(1000, info.State.LastSeq-seq+1)), jetstream.FetchMaxWait(30*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			seq = md.Sequence.Stream + 1
			r, err := events.Decode(m.Subject(), m.Headers(), m.Data())
			if err != nil {
				return nil, err
			}
			if r.Type != events.TypeInstanceStored {
				continue
			}
			var d events.InstanceStored
			if err := json.Unmarshal(r.Data, &d); err != nil {
				return nil, err
			}
			out = append(out, &d)
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, fmt.Errorf("the stream ends at %d, but nothing came after %d", info.State.LastSeq, seq-1)
		}
	}
	return out, nil
}

// dataSet is what follows the file meta information of a Part 10 file.
func dataSet(b []byte) []byte {
	r, err := part10.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil
	}
	ds, err := io.ReadAll(r)
	if err != nil {
		return nil
	}
	return ds
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if sc.Text() != "" {
			out = append(out, sc.Text())
		}
	}
	return out, sc.Err()
}
EOF
go build -o "$TOOL" "./bench/out/$(basename "$SRC")"
rm -rf "$SRC"
SRC=""

# ---- pacsflow up ----
DICOM_PORT="" NATS_URL=""
start_up() { # start_up LOGNAME: starts pacsflow, waits until it listens, sets UP, DICOM_PORT, NATS_URL
  local out=$W/logs/$1.out err=$W/logs/$1.err deadline=$((SECONDS + 60))
  "$BIN" up --data "$W/data" --storage "$STORAGE" --dicom-addr 127.0.0.1:0 --nats-listen 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --quiet-period 500ms --min-free-bytes 1048576 >"$out" 2>"$err" &
  UP=$!
  until grep -q '^storage: ' "$out" 2>/dev/null; do
    kill -0 "$UP" 2>/dev/null || die "pacsflow up exited before listening (after a kill -9?); see $err"
    [ $SECONDS -lt $deadline ] || die "pacsflow up did not listen within 60 s; see $err"
    sleep 0.01
  done
  DICOM_PORT=$(sed -n 's/^DICOM SCP .* listening on .*:\([0-9]*\)$/\1/p' "$out")
  NATS_URL=$(sed -n 's/^NATS (embedded.*) listening on \(nats:.*\)$/\1/p' "$out")
  [ -n "$DICOM_PORT" ] && [ -n "$NATS_URL" ] || die "cannot read the addresses from $out"
}

# check ARGS...: runs the checking tool; prints "success=S found=F lost=L bad=B events=E"
check() {
  "$TOOL" check -nats "$NATS_URL" -storage "$STORAGE" -data "$W/data" -sent "$W/sent" "$@" 2>>"$W/logs/check.err" ||
    die "checking failed; see $W/logs/check.err"
}
field() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"; } # field NAME "success=1 ..."

# storescu's -d log: one block per DIMSE message; print the SOP Instance UIDs of the
# requests whose response (matched by message ID) has status 0x0000 Success.
successes() {
  awk -F' +: ' '
    /OUTGOING DIMSE MESSAGE|INCOMING DIMSE MESSAGE/ { inb = 1; split("", f); next }
    /END DIMSE MESSAGE/ && inb {
      if (f["Message Type"] == "C-STORE RQ") req[f["Message ID"]] = f["Affected SOP Instance UID"]
      else if (f["Message Type"] == "C-STORE RSP" && f["DIMSE Status"] ~ /^0x0000/) print req[f["Message ID Being Responded To"]]
      inb = 0; next
    }
    inb && NF >= 2 { k = $1; sub(/^D: /, "", k); f[k] = $2 }
  ' "$1"
}

echo "crash.sh: $N iterations, storage $STORAGE, $INSTANCES instances per study, SEED=$SEED"
printf '%-5s %-28s %-8s %-8s %-6s %-5s %s\n' iter kill-point sent success found lost storescu
TOTAL_SUCCESS=0 TOTAL_FOUND=0 TOTAL_LOST=0
# The iteration that ended with the last kill is checked after the restart that follows.
PREV="" PREV_KILL="" PREV_SENT="" PREV_RC="" RETRY=""
report_previous() {
  [ -n "$PREV" ] || return 0
  local r s f l
  r=$(check "$W/acked-$PREV.txt")
  s=$(field success "$r") f=$(field found "$r") l=$(field lost "$r")
  TOTAL_SUCCESS=$((TOTAL_SUCCESS + s)) TOTAL_FOUND=$((TOTAL_FOUND + f)) TOTAL_LOST=$((TOTAL_LOST + l))
  printf '%-5s %-28s %-8s %-8s %-6s %-5s exit %s\n' "$PREV" "$PREV_KILL" "$PREV_SENT" "$s" "$f" "$l" "$PREV_RC"
}

for ((i = 1; i <= N; i++)); do
  start_up "up-$i"
  report_previous
  "$TOOL" gen "$W/sent/$i" "$INSTANCES"
  files=("$W/sent/$i"/*.dcm)
  [ -n "$RETRY" ] && files=("$W/sent/$RETRY"/*.dcm "${files[@]}")
  log=$W/logs/storescu-$i.log
  storescu -R -d -aet STORESCU -aec PACSFLOW 127.0.0.1 "$DICOM_PORT" "${files[@]}" >"$log" 2>&1 &
  SCU=$!
  responses=$((RANDOM % (${#files[@]} + 1)))
  delay_us=$((RANDOM % 5000))
  while [ "$(grep -c 'C-STORE RSP' "$log" || true)" -lt $responses ] && kill -0 $SCU 2>/dev/null; do sleep 0.001; done
  sleep "$(printf '0.%06d' $delay_us)"
  kill -9 "$UP" 2>/dev/null || die "pacsflow up had exited by itself in iteration $i; see $W/logs/up-$i.err"
  wait "$UP" 2>/dev/null || true
  UP=""
  rc=0
  wait "$SCU" || rc=$?
  SCU=""
  successes "$log" >"$W/acked-$i.txt"
  RETRY=""
  [ $rc -ne 0 ] && RETRY=$i
  PREV=$i PREV_KILL="after $responses rsp + ${delay_us}us" PREV_SENT=${#files[@]} PREV_RC=$rc
done

start_up final
report_previous
all=$(check -all "$W"/acked-*.txt)
echo "total: $N kills; Successes seen by the sender: $TOTAL_SUCCESS; found in storage with event: $TOTAL_FOUND; lost: $TOTAL_LOST"
echo "       all events: $(field events "$all"), with a missing or corrupt object: $(field bad "$all"); distinct UIDs answered Success: $(sort -u "$W"/acked-*.txt | wc -l)"
kill -INT "$UP"
rc=0
wait "$UP" || rc=$?
UP=""
[ $rc -eq 0 ] || die "pacsflow up exited $rc on SIGINT; see $W/logs/final.err"
[ "$TOTAL_LOST" -eq 0 ] && [ "$(field lost "$all")" -eq 0 ] && [ "$(field bad "$all")" -eq 0 ] ||
  die "instances answered Success were lost or are corrupt; see $W/logs/check.err"
echo "crash.sh: OK (SEED=$SEED)"
