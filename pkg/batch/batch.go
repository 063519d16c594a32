// Package batch groups requests that arrive one at a time from many goroutines into batches,
// as model servers (TF-Serving, Triton) do: a batch is run when it holds MaxSize requests or
// when its first request has waited MaxWait, whichever comes first.
package batch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Config bounds batches.
type Config struct {
	// MaxSize is the largest batch (at least 1).
	MaxSize int
	// MaxWait is how long the first request of a batch waits for others; 0 runs whatever
	// has arrived at once.
	MaxWait time.Duration
	// Workers is how many batches may run at the same time (at least 1).
	Workers int
}

// Stats describe one batch that ran, for metrics.
type Stats struct {
	Size int
	// Waited is how long the batch's first request waited before the batch started.
	Waited time.Duration
	Ran    time.Duration
	Err    error
}

// Batcher runs batches of In through a function that returns one Out per In.
type Batcher[In, Out any] struct {
	cfg     Config
	run     func(ctx context.Context, in []In) ([]Out, error)
	observe func(Stats)
	queue   chan request[In, Out]
	stopped chan struct{} // closed when Run returns
}

type request[In, Out any] struct {
	ctx   context.Context
	in    In
	reply chan result[Out]
}

type result[Out any] struct {
	out Out
	err error
}

// ErrStopped is returned for requests made after the batcher stopped.
var ErrStopped = errors.New("batcher stopped")

// New returns a batcher around run; observe (may be nil) is told about every batch.
func New[In, Out any](cfg Config, run func(ctx context.Context, in []In) ([]Out, error), observe func(Stats)) (*Batcher[In, Out], error) {
	if cfg.MaxSize < 1 || cfg.Workers < 1 || cfg.MaxWait < 0 {
		return nil, fmt.Errorf("batch config %+v: want MaxSize ≥ 1, Workers ≥ 1, MaxWait ≥ 0", cfg)
	}
	if observe == nil {
		observe = func(Stats) {}
	}
	return &Batcher[In, Out]{cfg: cfg, run: run, observe: observe, queue: make(chan request[In, Out]), stopped: make(chan struct{})}, nil
}

// Do submits one request and waits for its result. A request whose ctx ends before its batch
// starts is dropped from the batch.
func (b *Batcher[In, Out]) Do(ctx context.Context, in In) (Out, error) {
	req := request[In, Out]{ctx: ctx, in: in, reply: make(chan result[Out], 1)}
	var zero Out
	select {
	case b.queue <- req:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-b.stopped:
		return zero, ErrStopped
	}
	select {
	case r := <-req.reply:
		return r.out, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// Run collects and runs batches until ctx ends; batches already running finish first. It is
// the owner of the batcher's goroutines: call it once.
func (b *Batcher[In, Out]) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer close(b.stopped)
	defer wg.Wait()
	slots := make(chan struct{}, b.cfg.Workers)
	for {
		var first request[In, Out]
		select {
		case first = <-b.queue:
		case <-ctx.Done():
			return nil
		}
		start := time.Now()
		pending := []request[In, Out]{first}
		timer := time.NewTimer(b.cfg.MaxWait)
		// Until MaxWait passes the batch only collects. Then it runs as soon as a worker is
		// free, and while every worker is busy it keeps taking requests up to MaxSize: under
		// load the batches are as large as the queue, not what came within MaxWait.
		expired := timer.C
		var free chan<- struct{}
		claimed := false // a worker's slot
		for !claimed && len(pending) < b.cfg.MaxSize {
			select {
			case r := <-b.queue:
				pending = append(pending, r)
			case <-expired:
				expired, free = nil, slots
			case free <- struct{}{}:
				claimed = true
			case <-ctx.Done():
				timer.Stop()
				for _, r := range pending {
					r.reply <- result[Out]{err: ErrStopped}
				}
				return nil
			}
		}
		timer.Stop()
		if !claimed {
			slots <- struct{}{}
		}
		wg.Go(func() {
			defer func() { <-slots }()
			b.runBatch(ctx, pending, start)
		})
	}
}

func (b *Batcher[In, Out]) runBatch(ctx context.Context, pending []request[In, Out], first time.Time) {
	live := pending[:0]
	for _, r := range pending {
		if r.ctx.Err() == nil {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return
	}
	ins := make([]In, len(live))
	for i, r := range live {
		ins[i] = r.in
	}
	started := time.Now()
	outs, err := b.run(ctx, ins)
	if err == nil && len(outs) != len(ins) {
		err = fmt.Errorf("batch of %d gave %d results", len(ins), len(outs))
	}
	b.observe(Stats{Size: len(ins), Waited: started.Sub(first), Ran: time.Since(started), Err: err})
	for i, r := range live {
		if err != nil {
			r.reply <- result[Out]{err: err}
		} else {
			r.reply <- result[Out]{out: outs[i]}
		}
	}
}
