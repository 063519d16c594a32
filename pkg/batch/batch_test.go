package batch

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// double is a batch function that records the batch sizes it saw.
type double struct {
	mu      sync.Mutex
	sizes   []int
	gate    chan struct{} // when not nil, each batch waits for a value
	started chan int      // when not nil, receives each batch's size as it starts
}

func (d *double) run(_ context.Context, in []int) ([]int, error) {
	if d.started != nil {
		d.started <- len(in)
	}
	if d.gate != nil {
		<-d.gate
	}
	d.mu.Lock()
	d.sizes = append(d.sizes, len(in))
	d.mu.Unlock()
	out := make([]int, len(in))
	for i, v := range in {
		out[i] = 2 * v
	}
	return out, nil
}

func start[In, Out any](t *testing.T, b *Batcher[In, Out]) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestBatchesFillUpToMaxSize(t *testing.T) {
	d := &double{gate: make(chan struct{})}
	b, err := New(Config{MaxSize: 4, MaxWait: time.Hour, Workers: 1}, d.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	start(t, b)
	var wg sync.WaitGroup
	results := make([]int, 8)
	for i := range 8 {
		wg.Go(func() {
			v, err := b.Do(context.Background(), i)
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		})
	}
	// With MaxWait an hour, only full batches run: two of four.
	d.gate <- struct{}{}
	d.gate <- struct{}{}
	wg.Wait()
	for i, v := range results {
		if v != 2*i {
			t.Errorf("result %d = %d", i, v)
		}
	}
	if len(d.sizes) != 2 || d.sizes[0] != 4 || d.sizes[1] != 4 {
		t.Errorf("batch sizes %v, want [4 4]", d.sizes)
	}
}

func TestMaxWaitRunsPartialBatch(t *testing.T) {
	d := &double{}
	var stats []Stats
	var mu sync.Mutex
	b, err := New(Config{MaxSize: 32, MaxWait: 20 * time.Millisecond, Workers: 1}, d.run, func(s Stats) {
		mu.Lock()
		stats = append(stats, s)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, b)
	if v, err := b.Do(context.Background(), 21); err != nil || v != 42 {
		t.Fatalf("Do = %d, %v", v, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(stats) != 1 || stats[0].Size != 1 || stats[0].Waited < 20*time.Millisecond {
		t.Errorf("stats %+v: want one batch of 1 that waited MaxWait", stats)
	}
}

func TestErrorsReachEveryRequest(t *testing.T) {
	boom := errors.New("boom")
	b, err := New(Config{MaxSize: 2, MaxWait: time.Hour, Workers: 1}, func(context.Context, []int) ([]int, error) { return nil, boom }, nil)
	if err != nil {
		t.Fatal(err)
	}
	start(t, b)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			if _, err := b.Do(context.Background(), i); !errors.Is(err, boom) {
				t.Errorf("Do = %v, want boom", err)
			}
		})
	}
	wg.Wait()

	short, _ := New(Config{MaxSize: 1, Workers: 1}, func(context.Context, []int) ([]int, error) { return nil, nil }, nil)
	start(t, short)
	if _, err := short.Do(context.Background(), 1); err == nil {
		t.Error("a batch function that returns too few results went unnoticed")
	}
}

func TestCancelledRequestLeavesBatch(t *testing.T) {
	d := &double{}
	b, _ := New(Config{MaxSize: 2, Workers: 1}, d.run, nil)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	gone := request[int, int]{ctx: cancelled, in: 1, reply: make(chan result[int], 1)}
	live := request[int, int]{ctx: context.Background(), in: 2, reply: make(chan result[int], 1)}
	b.runBatch(context.Background(), []request[int, int]{gone, live}, time.Now())
	if r := <-live.reply; r.err != nil || r.out != 4 {
		t.Fatalf("live request got %+v", r)
	}
	if len(d.sizes) != 1 || d.sizes[0] != 1 {
		t.Errorf("batch sizes %v, want [1]: the cancelled request ran", d.sizes)
	}
}

func TestStopped(t *testing.T) {
	b, _ := New(Config{MaxSize: 1, Workers: 1}, (&double{}).run, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Run(ctx)
	if _, err := b.Do(context.Background(), 1); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do after Run returned = %v", err)
	}
	if _, err := New(Config{MaxSize: 0, Workers: 1}, (&double{}).run, nil); err == nil {
		t.Error("MaxSize 0 accepted")
	}
}

// While the only worker is busy, the next batch takes every request that
// queues, beyond MaxWait, up to MaxSize.
func TestBatchGrowsWhileWorkersAreBusy(t *testing.T) {
	d := &double{gate: make(chan struct{}), started: make(chan int, 4)}
	b, err := New(Config{MaxSize: 8, MaxWait: time.Millisecond, Workers: 1}, d.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	start(t, b)
	var replies []chan result[int]
	send := func(v int) {
		r := request[int, int]{ctx: context.Background(), in: v, reply: make(chan result[int], 1)}
		select {
		case b.queue <- r: // Run has taken it
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d not taken in 10 s: the batcher stopped collecting while its worker was busy", v)
		}
		replies = append(replies, r.reply)
	}
	send(0)
	if n := <-d.started; n != 1 {
		t.Fatalf("first batch of %d, want 1", n)
	}
	send(1)
	// Past MaxWait: the second batch is due, but the worker is busy.
	time.Sleep(20 * time.Millisecond)
	for v := 2; v <= 5; v++ {
		send(v)
	}
	d.gate <- struct{}{} // the first batch ends; the worker is free
	if n := <-d.started; n != 5 {
		t.Errorf("second batch of %d, want the 5 requests that queued meanwhile", n)
	}
	d.gate <- struct{}{}
	for i, c := range replies {
		if r := <-c; r.err != nil || r.out != 2*i {
			t.Errorf("request %d: %+v", i, r)
		}
	}
}
