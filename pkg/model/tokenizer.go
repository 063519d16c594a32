package model

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Tokenizer is the contract's word tokenizer (schemas/model-contract.md, "Text").
type Tokenizer struct {
	spec  TokenizerSpec
	words []string
	ids   map[string]int32
}

const punctuation = ".,;:?"

// NewTokenizer builds a tokenizer from a vocabulary (one token per line, id = line index).
func NewTokenizer(spec TokenizerSpec, vocabulary []string) (*Tokenizer, error) {
	n := int32(len(vocabulary))
	for name, id := range map[string]int32{"pad_id": spec.PadID, "bos_id": spec.BosID, "eos_id": spec.EosID, "unk_id": spec.UnkID} {
		if id < 0 || id >= n {
			return nil, contractErr("tokenizer.%s %d is outside the vocabulary of %d tokens", name, id, n)
		}
	}
	ids := make(map[string]int32, len(vocabulary))
	for i, w := range vocabulary {
		if _, dup := ids[w]; dup {
			return nil, contractErr("vocabulary has %q twice (lines %d and %d)", w, ids[w]+1, i+1)
		}
		ids[w] = int32(i)
	}
	return &Tokenizer{spec: spec, words: vocabulary, ids: ids}, nil
}

// readVocabulary reads a vocabulary file, one token per line.
func readVocabulary(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read vocabulary: %w", err)
	}
	defer f.Close()
	var words []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		words = append(words, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read vocabulary %s: %w", path, err)
	}
	return words, nil
}

// Words splits text into tokens: runs of [a-z0-9] (after lower-casing when the spec says so)
// and single punctuation marks; everything else separates tokens.
func (t *Tokenizer) Words(text string) []string {
	if t.spec.Lowercase {
		text = strings.ToLower(text)
	}
	var out []string
	start := -1
	flush := func(end int) {
		if start >= 0 {
			out = append(out, text[start:end])
			start = -1
		}
	}
	for i, r := range text {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			if start < 0 {
				start = i
			}
		case strings.ContainsRune(punctuation, r):
			flush(i)
			out = append(out, string(r))
		default:
			flush(i)
		}
	}
	flush(len(text))
	return out
}

// Encode returns text as length token ids: the words, eos, then pad; a long text is cut so
// that eos stays last.
func (t *Tokenizer) Encode(text string, length int) []int32 {
	out := make([]int32, length)
	for i := range out {
		out[i] = t.spec.PadID
	}
	if length == 0 {
		return out
	}
	words := t.Words(text)
	if len(words) > length-1 {
		words = words[:length-1]
	}
	for i, w := range words {
		id, ok := t.ids[w]
		if !ok {
			id = t.spec.UnkID
		}
		out[i] = id
	}
	out[len(words)] = t.spec.EosID
	return out
}

// Decode turns generated ids into text: up to the first eos, without pad, bos and unk, no
// space before punctuation, each sentence capitalized.
func (t *Tokenizer) Decode(ids []int32) string {
	var b strings.Builder
	capital := true
	for _, id := range ids {
		if id == t.spec.EosID {
			break
		}
		if id == t.spec.PadID || id == t.spec.BosID || id == t.spec.UnkID || id < 0 || int(id) >= len(t.words) {
			continue
		}
		w := t.words[id]
		isPunct := len(w) == 1 && strings.Contains(punctuation, w)
		if b.Len() > 0 && !isPunct {
			b.WriteByte(' ')
		}
		if capital && !isPunct {
			w = strings.ToUpper(w[:1]) + w[1:]
			capital = false
		}
		b.WriteString(w)
		if w == "." || w == "?" {
			capital = true
		}
	}
	return b.String()
}
