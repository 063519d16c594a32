package dimse

import (
	"errors"
	"fmt"
	"io"

	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
)

// ErrProtocol is wrapped by errors about a peer breaking the DIMSE rules of
// PS3.7 §9.3 and PS3.8 Annex E: fragments out of order, on the wrong
// presentation context, or a command set too large.
var ErrProtocol = errors.New("DIMSE protocol violation")

// conn reads and writes DIMSE messages over an established association.
// It assumes an asynchronous operations window of one: a message's data set
// directly follows its command.
type conn struct {
	a *ul.Association
	// cmd accumulates command fragments; reused across messages.
	cmd []byte
}

// readCommand reassembles the next command set. It returns
// ul.ErrReleaseRequested when the peer asks to release instead.
func (c *conn) readCommand() (byte, *Command, error) {
	c.cmd = c.cmd[:0]
	var pcid byte
	for first := true; ; first = false {
		v, err := c.a.NextPDV()
		if err != nil {
			if !first && errors.Is(err, ul.ErrReleaseRequested) {
				err = fmt.Errorf("%w: A-RELEASE-RQ in the middle of a command set", ErrProtocol)
			}
			return 0, nil, err
		}
		switch {
		case !v.Command:
			return 0, nil, fmt.Errorf("%w: data set fragment on context %d where a command was expected", ErrProtocol, v.ContextID)
		case !first && v.ContextID != pcid:
			return 0, nil, fmt.Errorf("%w: command fragments on contexts %d and %d", ErrProtocol, pcid, v.ContextID)
		case len(c.cmd)+len(v.Data) > MaxCommandLength:
			return 0, nil, fmt.Errorf("%w: command set longer than %d bytes", ErrProtocol, MaxCommandLength)
		}
		pcid = v.ContextID
		c.cmd = append(c.cmd, v.Data...)
		if v.Last {
			cmd, err := DecodeCommand(c.cmd)
			return pcid, cmd, err
		}
	}
}

// writeCommand sends a command set in one or more PDVs.
func (c *conn) writeCommand(pcid byte, cmd *Command) error {
	return c.a.Send(pcid, true, cmd.Encode())
}

// dataSetReader streams one data set as its PDVs arrive. Read returns io.EOF
// only after the fragment flagged last; if the association ends first, it
// returns an error wrapping the reason, so a reader that sees io.EOF has the
// complete data set.
type dataSetReader struct {
	a    *ul.Association
	pcid byte
	cur  []byte
	last bool
	err  error
	n    int64
}

func newDataSetReader(a *ul.Association, pcid byte) *dataSetReader {
	return &dataSetReader{a: a, pcid: pcid}
}

// next fetches the next fragment; it returns false at the end or on error.
func (r *dataSetReader) next() bool {
	if r.err != nil || r.last {
		return false
	}
	v, err := r.a.NextPDV()
	switch {
	case errors.Is(err, ul.ErrReleaseRequested):
		r.err = fmt.Errorf("%w: A-RELEASE-RQ after %d bytes of a data set", ErrProtocol, r.n)
	case err != nil:
		r.err = fmt.Errorf("data set incomplete after %d bytes: %w", r.n, err)
	case v.Command:
		r.err = fmt.Errorf("%w: command fragment after %d bytes of a data set", ErrProtocol, r.n)
	case v.ContextID != r.pcid:
		r.err = fmt.Errorf("%w: data set fragment on context %d, expected %d", ErrProtocol, v.ContextID, r.pcid)
	default:
		r.cur, r.last = v.Data, v.Last
		r.n += int64(len(v.Data))
		return true
	}
	return false
}

func (r *dataSetReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if !r.next() {
			return 0, r.endErr()
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// WriteTo hands each fragment straight from the PDU buffer to w.
func (r *dataSetReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(r.cur) > 0 {
			n, err := w.Write(r.cur)
			total += int64(n)
			r.cur = r.cur[n:]
			if err != nil {
				return total, err
			}
		}
		if !r.next() {
			if err := r.endErr(); err != io.EOF {
				return total, err
			}
			return total, nil
		}
	}
}

func (r *dataSetReader) endErr() error {
	if r.err != nil {
		return r.err
	}
	return io.EOF
}

// drain consumes what the handler left unread, so that the response
// follows the whole request as PS3.7 requires.
func (r *dataSetReader) drain() error {
	r.cur = nil
	for r.next() {
		r.cur = nil
	}
	return r.err
}

// complete reports whether the whole data set arrived.
func (r *dataSetReader) complete() bool { return r.last && r.err == nil }

func newConn(a *ul.Association) conn { return conn{a: a} }
