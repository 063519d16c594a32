package model

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	tensorpb "github.com/wamuir/graft/tensorflow/core/framework/tensor_shape_go_proto"
	typespb "github.com/wamuir/graft/tensorflow/core/framework/types_go_proto"
	corepb "github.com/wamuir/graft/tensorflow/core/protobuf/for_core_protos_go_proto"
	"google.golang.org/protobuf/proto"
)

// validContract is a contract with all three signatures, as the reference model has them.
func validContract() *Contract {
	img := TensorSpec{Float32, []int64{-1, 64, 64, 1}}
	return &Contract{
		ContractVersion: "1",
		Model:           ModelInfo{Name: "test", Version: "0.1", IntendedUse: "tests only"},
		Labels:          []string{"nodule", "effusion", "fracture"},
		Preprocessing: Preprocessing{
			ImageSize: [2]int{64, 64}, Channels: 1, ValueRange: [2]float64{0, 1},
			Window: Window{Center: 2048, Width: 4096}, AcceptedModalities: []string{"CR", "DX"},
		},
		Tokenizer:     TokenizerSpec{Kind: "word", Vocabulary: "vocab.txt", Lowercase: true, PadID: 0, BosID: 1, EosID: 2, UnkID: 3},
		GenerateTasks: map[string]int32{"synthesize": 0, "restore": 1, "convert": 2},
		Signatures: map[string]SignatureDef{
			SigUnderstand: {
				Inputs: map[string]TensorSpec{"images": img},
				Outputs: map[string]TensorSpec{
					"probabilities": {Float32, []int64{-1, 3}},
					"boxes":         {Float32, []int64{-1, 3, 4}},
					"report_tokens": {Int32, []int64{-1, 32}},
				},
			},
			SigAsk: {
				Inputs:  map[string]TensorSpec{"images": img, "question_tokens": {Int32, []int64{-1, 12}}},
				Outputs: map[string]TensorSpec{"answer_tokens": {Int32, []int64{-1, 8}}},
			},
			SigGenerate: {
				Inputs: map[string]TensorSpec{
					"task": {Int32, []int64{-1}}, "condition_tokens": {Int32, []int64{-1, 12}},
					"source_images": img, "noise": {Float32, []int64{-1, 16}},
				},
				Outputs: map[string]TensorSpec{"images": img},
			},
		},
	}
}

func TestContractCheck(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Contract)
		want   string // "" for a contract that passes
	}{
		{"valid", func(*Contract) {}, ""},
		{"understand only", func(c *Contract) {
			delete(c.Signatures, SigAsk)
			delete(c.Signatures, SigGenerate)
			c.GenerateTasks = nil
		}, ""},
		{"version", func(c *Contract) { c.ContractVersion = "2" }, `contract_version is "2"`},
		{"no name", func(c *Contract) { c.Model.Name = "" }, "model.name"},
		{"no labels", func(c *Contract) { c.Labels = nil }, "labels is empty"},
		{"image size", func(c *Contract) { c.Preprocessing.ImageSize = [2]int{0, 64} }, "image_size"},
		{"channels", func(c *Contract) { c.Preprocessing.Channels = 2 }, "channels is 2"},
		{"value range", func(c *Contract) { c.Preprocessing.ValueRange = [2]float64{1, 1} }, "value_range"},
		{"window", func(c *Contract) { c.Preprocessing.Window.Width = 0 }, "window.width"},
		{"tokenizer kind", func(c *Contract) { c.Tokenizer.Kind = "bpe" }, `tokenizer.kind is "bpe"`},
		{"no signatures", func(c *Contract) { c.Signatures = nil }, "signatures is empty"},
		{"unknown signature", func(c *Contract) { c.Signatures["segment"] = SignatureDef{} }, `signature "segment" is not part`},
		{"missing input", func(c *Contract) { delete(c.Signatures[SigAsk].Inputs, "question_tokens") }, `signature ask lacks input "question_tokens"`},
		{"missing output", func(c *Contract) { delete(c.Signatures[SigUnderstand].Outputs, "boxes") }, `signature understand lacks output "boxes"`},
		{"extra input", func(c *Contract) {
			c.Signatures[SigUnderstand].Inputs["mask"] = TensorSpec{Float32, []int64{-1}}
		}, `has an input "mask"`},
		{"wrong dtype", func(c *Contract) {
			c.Signatures[SigUnderstand].Inputs["images"] = TensorSpec{Int32, []int64{-1, 64, 64, 1}}
		}, `input "images" is int32, want float32`},
		{"wrong image size", func(c *Contract) {
			c.Signatures[SigUnderstand].Inputs["images"] = TensorSpec{Float32, []int64{-1, 128, 128, 1}}
		}, `input "images" has shape float32[?,128,128,1], want float32[?,64,64,1]`},
		{"fixed batch", func(c *Contract) {
			c.Signatures[SigUnderstand].Inputs["images"] = TensorSpec{Float32, []int64{8, 64, 64, 1}}
		}, "has shape float32[8,64,64,1]"},
		{"labels disagree with K", func(c *Contract) { c.Labels = append(c.Labels, "mass") }, `output "boxes" has shape float32[?,3,4], want float32[?,4,4]`},
		{"zero length", func(c *Contract) {
			c.Signatures[SigUnderstand].Outputs["report_tokens"] = TensorSpec{Int32, []int64{-1, 0}}
		}, `output "report_tokens" has shape`},
		{"generate without tasks", func(c *Contract) { delete(c.GenerateTasks, "convert") }, `generate_tasks lacks "convert"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validContract()
			tt.change(c)
			err := c.Check()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrContract) {
				t.Fatalf("Check = %v, want an ErrContract containing %q", err, tt.want)
			}
		})
	}
}

// savedModelProto builds the saved_model.pb that TensorFlow would write for sigs.
func savedModelProto(sigs map[string]SignatureDef) *corepb.SavedModel {
	info := func(name string, s TensorSpec) *corepb.TensorInfo {
		dt := typespb.DataType_DT_FLOAT
		if s.DType == Int32 {
			dt = typespb.DataType_DT_INT32
		}
		shape := &tensorpb.TensorShapeProto{}
		for _, d := range s.Shape {
			shape.Dim = append(shape.Dim, &tensorpb.TensorShapeProto_Dim{Size: d})
		}
		return &corepb.TensorInfo{Encoding: &corepb.TensorInfo_Name{Name: name + ":0"}, Dtype: dt, TensorShape: shape}
	}
	defs := map[string]*corepb.SignatureDef{
		"__saved_model_init_op": {Outputs: map[string]*corepb.TensorInfo{"__saved_model_init_op": {Encoding: &corepb.TensorInfo_Name{Name: "NoOp"}}}},
	}
	for name, sig := range sigs {
		sd := &corepb.SignatureDef{Inputs: map[string]*corepb.TensorInfo{}, Outputs: map[string]*corepb.TensorInfo{}}
		for k, s := range sig.Inputs {
			sd.Inputs[k] = info(name+"_"+k, s)
		}
		for k, s := range sig.Outputs {
			sd.Outputs[k] = info("StatefulPartitionedCall", s)
		}
		defs[name] = sd
	}
	return &corepb.SavedModel{
		SavedModelSchemaVersion: 1,
		MetaGraphs: []*corepb.MetaGraphDef{{
			MetaInfoDef:  &corepb.MetaGraphDef_MetaInfoDef{Tags: []string{ServeTag}},
			SignatureDef: defs,
		}},
	}
}

// writeModelDir writes a model directory with a saved_model.pb for saved, contract c and a
// small vocabulary; nil leaves a part out.
func writeModelDir(t *testing.T, saved map[string]SignatureDef, c *Contract) string {
	t.Helper()
	dir := t.TempDir()
	if saved != nil {
		b, err := proto.Marshal(savedModelProto(saved))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "saved_model.pb"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "assets"), 0o755); err != nil {
		t.Fatal(err)
	}
	if c != nil {
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ContractFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	vocab := "<pad>\n<bos>\n<eos>\n<unk>\nnodule\n.\n"
	if err := os.WriteFile(filepath.Join(dir, "assets", "vocab.txt"), []byte(vocab), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestInspect(t *testing.T) {
	good := validContract()
	tests := []struct {
		name  string
		dir   func(t *testing.T) string
		want  string
		sigsN int // signatures Inspect returns even on failure
	}{
		{"valid", func(t *testing.T) string { return writeModelDir(t, good.Signatures, good) }, "", 3},
		{"no saved_model.pb", func(t *testing.T) string { return writeModelDir(t, nil, good) }, "has no saved_model.pb", 0},
		{"corrupt saved_model.pb", func(t *testing.T) string {
			dir := writeModelDir(t, good.Signatures, good)
			if err := os.WriteFile(filepath.Join(dir, "saved_model.pb"), []byte("\x0a\xff\xff\xff"), 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}, "saved_model.pb is corrupt", 0},
		{"no contract", func(t *testing.T) string { return writeModelDir(t, good.Signatures, nil) }, "assets/model-contract.json is missing", 3},
		{"contract not JSON", func(t *testing.T) string {
			dir := writeModelDir(t, good.Signatures, good)
			if err := os.WriteFile(filepath.Join(dir, ContractFile), []byte("{"), 0o644); err != nil {
				t.Fatal(err)
			}
			return dir
		}, "unexpected end of JSON input", 3},
		{"signature missing from the SavedModel", func(t *testing.T) string {
			saved := validContract().Signatures
			delete(saved, SigAsk)
			return writeModelDir(t, saved, good)
		}, `the SavedModel has no signature "ask" (it has generate, understand)`, 2},
		{"dtype differs in the SavedModel", func(t *testing.T) string {
			saved := validContract().Signatures
			saved[SigGenerate].Inputs["task"] = TensorSpec{Float32, []int64{-1}}
			return writeModelDir(t, saved, good)
		}, `signature generate (in the SavedModel) input "task" is float32, want int32`, 3},
		{"shape differs in the SavedModel", func(t *testing.T) string {
			saved := validContract().Signatures
			saved[SigUnderstand].Outputs["report_tokens"] = TensorSpec{Int32, []int64{-1, 16}}
			return writeModelDir(t, saved, good)
		}, `output "report_tokens" has shape int32[?,16], want int32[?,32]`, 3},
		{"token id outside the vocabulary", func(t *testing.T) string {
			c := validContract()
			c.Tokenizer.UnkID = 99
			return writeModelDir(t, c.Signatures, c)
		}, "tokenizer.unk_id 99 is outside the vocabulary of 6 tokens", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, saved, err := Inspect(tt.dir(t))
			if len(saved) != tt.sigsN {
				t.Errorf("Inspect returned %d signatures, want %d", len(saved), tt.sigsN)
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Inspect: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Inspect = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestOpenWithoutRuntime(t *testing.T) {
	c := validContract()
	dir := writeModelDir(t, c.Signatures, c)
	_, err := Open(context.Background(), dir, Options{Runtime: "onnx"})
	if err == nil || !strings.Contains(err.Error(), `unknown model runtime "onnx"`) {
		t.Fatalf("Open with runtime onnx = %v", err)
	}
}

func TestSessionConfig(t *testing.T) {
	b, err := Options{IntraOpThreads: 2, InterOpThreads: 1, GPUMemoryGrowth: true, VisibleGPUs: "1", CPUOnly: true}.sessionConfig()
	if err != nil {
		t.Fatal(err)
	}
	var cfg corepb.ConfigProto
	if err := proto.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.IntraOpParallelismThreads != 2 || cfg.InterOpParallelismThreads != 1 || !cfg.GpuOptions.GetAllowGrowth() ||
		cfg.GpuOptions.GetVisibleDeviceList() != "1" || cfg.DeviceCount["GPU"] != 0 || len(cfg.DeviceCount) != 1 || !cfg.AllowSoftPlacement {
		t.Fatalf("session config = %v", &cfg)
	}
}

// failingRuntime fails every run, as TensorFlow does when a SavedModel's variables were not
// restored.
type failingRuntime struct{ closed bool }

func (f *failingRuntime) Run(context.Context, string, map[string]*Tensor) (map[string]*Tensor, error) {
	return nil, errors.New("Could not find variable conv2d/kernel")
}

func (f *failingRuntime) Close() error { f.closed = true; return nil }

func TestWarmUpFindsBrokenModel(t *testing.T) {
	c := validContract()
	tok, err := NewTokenizer(c.Tokenizer, []string{"<pad>", "<bos>", "<eos>", "<unk>"})
	if err != nil {
		t.Fatal(err)
	}
	m := &Model{contract: c, tokenizer: tok, rt: &failingRuntime{}}
	err = m.warmUp(context.Background())
	if err == nil || !strings.Contains(err.Error(), "warm-up run of ask: Could not find variable") {
		t.Fatalf("warmUp = %v", err)
	}
}
