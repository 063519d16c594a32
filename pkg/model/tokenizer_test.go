package model

import (
	"slices"
	"testing"
	"unicode/utf8"
)

func testTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	vocab := []string{"<pad>", "<bos>", "<eos>", "<unk>", "a", "nodule", "is", "seen", "in", "the", "right", "upper", "zone", ".", "no", "effusion", ",", "?", "2"}
	tok, err := NewTokenizer(TokenizerSpec{Kind: "word", Lowercase: true, PadID: 0, BosID: 1, EosID: 2, UnkID: 3}, vocab)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenizerEncode(t *testing.T) {
	tok := testTokenizer(t)
	tests := []struct {
		text   string
		length int
		want   []int32
	}{
		{"A nodule.", 6, []int32{4, 5, 13, 2, 0, 0}},
		{"  NODULE,effusion?", 6, []int32{5, 16, 15, 17, 2, 0}},
		{"nodule (RUL) 2mm", 8, []int32{5, 3, 3, 2, 0, 0, 0, 0}},  // unknown words, brackets dropped
		{"nodule-seen", 4, []int32{5, 7, 2, 0}},                   // '-' separates
		{"a nodule is seen in the right", 4, []int32{4, 5, 6, 2}}, // cut, eos kept last
		{"", 3, []int32{2, 0, 0}},
		{"größe nodule", 4, []int32{3, 3, 5, 2}}, // non-ASCII letters separate words
		{"nodule", 0, []int32{}},
	}
	for _, tt := range tests {
		if got := tok.Encode(tt.text, tt.length); !slices.Equal(got, tt.want) {
			t.Errorf("Encode(%q, %d) = %v, want %v", tt.text, tt.length, got, tt.want)
		}
	}
}

func TestTokenizerDecode(t *testing.T) {
	tok := testTokenizer(t)
	tests := []struct {
		ids  []int32
		want string
	}{
		{[]int32{4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 13, 2, 0}, "A nodule is seen in the right upper zone. No effusion."},
		{[]int32{1, 5, 16, 15, 17, 2, 5}, "Nodule, effusion?"}, // bos dropped, nothing after eos
		{[]int32{5, 3, 0, 15}, "Nodule effusion"},              // unk and pad dropped
		{[]int32{99, -1, 5}, "Nodule"},                         // ids outside the vocabulary dropped
		{[]int32{2, 5}, ""},
	}
	for _, tt := range tests {
		if got := tok.Decode(tt.ids); got != tt.want {
			t.Errorf("Decode(%v) = %q, want %q", tt.ids, got, tt.want)
		}
	}
}

func TestNewTokenizerRejects(t *testing.T) {
	spec := TokenizerSpec{Kind: "word", PadID: 0, BosID: 1, EosID: 2, UnkID: 3}
	if _, err := NewTokenizer(spec, []string{"<pad>", "<bos>", "<eos>"}); err == nil {
		t.Error("unk_id outside the vocabulary accepted")
	}
	if _, err := NewTokenizer(spec, []string{"<pad>", "<bos>", "<eos>", "<unk>", "a", "a"}); err == nil {
		t.Error("duplicate token accepted")
	}
}

// FuzzTokenizer checks that any text encodes to exactly the length asked with eos last among
// the words, and that decoding the encoding is stable.
func FuzzTokenizer(f *testing.F) {
	for _, s := range []string{"A nodule is seen.", "", "??", "nodule,,effusion", "\xff\xfe", "größe"} {
		f.Add(s, 8)
	}
	tok := testTokenizer(f)
	f.Fuzz(func(t *testing.T, text string, length int) {
		length = length % 64
		if length < 0 {
			length = -length
		}
		ids := tok.Encode(text, length)
		if len(ids) != length {
			t.Fatalf("Encode(%q, %d) has %d ids", text, length, len(ids))
		}
		if length > 0 && !slices.Contains(ids, 2) {
			t.Fatalf("Encode(%q, %d) = %v has no eos", text, length, ids)
		}
		d := tok.Decode(ids)
		if !utf8.ValidString(d) {
			t.Fatalf("Decode gave invalid UTF-8 %q", d)
		}
		if again := tok.Decode(tok.Encode(d, length)); again != d && length > 0 && len(tok.Words(text)) < length {
			t.Fatalf("decode(encode(%q)) = %q, not stable", d, again)
		}
	})
}
