package storage

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// objects is an in-memory Reader.
type objects map[string]string

func (o objects) Open(_ context.Context, key string) (io.ReadCloser, Object, error) {
	v, ok := o[key]
	if !ok {
		return nil, Object{}, ErrNotFound
	}
	return io.NopCloser(strings.NewReader(v)), Object{Key: key, Size: int64(len(v))}, nil
}

func TestReadAll(t *testing.T) {
	r := objects{"a": "12345"}
	for _, c := range []struct {
		key   string
		limit int64
		want  string
		err   error
	}{
		{"a", 0, "12345", nil},
		{"a", 5, "12345", nil},
		{"a", 4, "", ErrTooLarge},
		{"b", 0, "", ErrNotFound},
	} {
		got, err := ReadAll(context.Background(), r, c.key, c.limit)
		if !errors.Is(err, c.err) || string(got) != c.want {
			t.Errorf("ReadAll(%s, %d) = %q, %v; want %q, %v", c.key, c.limit, got, err, c.want, c.err)
		}
	}
}
