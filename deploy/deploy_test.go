package deploy_test

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/internal/syncbuf"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// The chart, relative to this package's directory (the tests' working directory).
const (
	chartDir       = "helm/pacsflow"
	allOptionsFile = "helm/pacsflow/ci/all-options-values.yaml"
	release        = "pacsflow" // the release name the renders use: resources are pacsflow-<component>
	binaryPath     = "/usr/local/bin/pacsflow"
)

// staticBuild is the build command of the ingest and notify images, exactly as their
// Dockerfiles run it; the test runs it too (staticBuildArgs, with another -o) and checks
// what it makes.
const staticBuild = `RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/pacsflow ./cmd/pacsflow`

var staticBuildArgs = []string{"go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", "/out/pacsflow", "./cmd/pacsflow"}

// components are the Deployments the chart runs: name is the component (the Deployment
// <release>-<name>), cmd the pacsflow command it runs, http the port of --http-addr, where
// /metrics, /healthz and /readyz are served, and service the ClusterIP Service of that port.
var components = []struct {
	name    string
	cmd     []string
	http    int
	service string
}{
	{"ingest", []string{"ingest"}, 8080, release + "-ingest-http"},
	{"understand", []string{"understand"}, 8081, release + "-understand-http"},
	{"notify", []string{"notify"}, 8082, release + "-notify"},
	{"generate", []string{"generate", "serve"}, 8083, release + "-generate"},
}

// modelComponents are the components that run the model, on GPU nodes by default.
var modelComponents = []string{"understand", "generate"}

// TestHelmChart lints the chart (helm lint --strict) and renders it (helm template) with the
// default values and with ci/all-options-values.yaml (every option on: DICOM TLS, NodePort,
// the Ingress, the ServiceMonitor, the models from volumes, webhook rules and secrets, htpasswd
// users, the generate policy and UID root), then checks what the rendered manifests must hold (checkRender), including that
// pacsflow takes each container's command line, environment and mounted files
// (checkCommandLine); then that values which could never run are refused, and what NOTES.txt
// says.
func TestHelmChart(t *testing.T) {
	helm := helmPath(t)
	for _, args := range [][]string{nil, {"-f", allOptionsFile}} {
		lint := append([]string{"lint", "--strict"}, args...)
		if out, err := run(helm, append(lint, chartDir)...); err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(lint, " "), err, out)
		}
	}
	flags := pacsflowFlags(t)

	t.Run("defaults", func(t *testing.T) {
		v := loadValues(t)
		checkRender(t, render(t, helm), v, flags)
	})
	t.Run("all-options", func(t *testing.T) {
		v := loadValues(t, allOptionsFile)
		checkRender(t, render(t, helm, "-f", allOptionsFile), v, flags)
	})
	t.Run("stream-replicas-from-values", func(t *testing.T) {
		// --replicas follows nats.streamReplicas, whatever it is.
		v := loadValues(t)
		v.Nats.StreamReplicas = 5
		checkRender(t, render(t, helm, "--set", "nats.streamReplicas=5"), v, flags)
	})
	t.Run("nats-url-from-secret", func(t *testing.T) {
		r := render(t, helm, "--set", "nats.urlSecret.name=nats-creds")
		for _, comp := range components {
			d := r.deployment(t, comp.name)
			c := d.Spec.Template.Spec.Containers[0]
			if got := argValues(c.Args, "nats-url"); len(got) > 0 {
				t.Errorf("%s: --nats-url %q beside the URL from the Secret (the flag would win)", comp.name, got)
			}
			found := false
			for _, e := range c.Env {
				if e.Name == "PACSFLOW_NATS_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					found = *e.ValueFrom.SecretKeyRef == keyRef{Name: "nats-creds", Key: "url"}
				}
			}
			if !found {
				t.Errorf("%s: no PACSFLOW_NATS_URL from Secret nats-creds key url", comp.name)
			}
			checkCommandLine(t, r, comp.name, d.Spec.Template.Spec, c)
		}
	})
	for _, comp := range modelComponents {
		t.Run("cpu-only-"+comp, func(t *testing.T) {
			r := render(t, helm, "--set", comp+".gpu.enabled=false")
			d := r.deployment(t, comp)
			c := d.Spec.Template.Spec.Containers[0]
			if _, ok := c.Resources.Limits["nvidia.com/gpu"]; ok || len(d.Spec.Template.Spec.NodeSelector) > 0 || len(d.Spec.Template.Spec.Tolerations) > 0 {
				t.Errorf("%s.gpu.enabled=false still asks for a GPU node: limits %v, nodeSelector %v, tolerations %v",
					comp, c.Resources.Limits, d.Spec.Template.Spec.NodeSelector, d.Spec.Template.Spec.Tolerations)
			}
			if !strings.HasSuffix(c.Image, "-cpu") {
				t.Errorf("%s image %s: want the -cpu variant without a GPU", comp, c.Image)
			}
			// The other model component keeps its GPU.
			other := modelComponents[1-slices.Index(modelComponents, comp)]
			if oc := r.deployment(t, other).Spec.Template.Spec.Containers[0]; oc.Resources.Limits["nvidia.com/gpu"] != "1" || !strings.HasSuffix(oc.Image, "-gpu") {
				t.Errorf("%s.gpu.enabled=false took %s off the GPU: limits %v, image %s", comp, other, oc.Resources.Limits, oc.Image)
			}
		})
	}
	t.Run("pjrt", func(t *testing.T) {
		// The pjrt runtime: the -pjrt image, its plugin, for both model components, on GPUs.
		r := render(t, helm, "--set", "understand.modelRuntime=pjrt")
		for _, comp := range modelComponents {
			d := r.deployment(t, comp)
			c := d.Spec.Template.Spec.Containers[0]
			if got, plugin := argValues(c.Args, "model-runtime"), argValues(c.Args, "pjrt-plugin"); !slices.Equal(got, []string{"pjrt"}) ||
				!slices.Equal(plugin, []string{"/opt/pacsflow/pjrt/xla_cuda_plugin.so"}) {
				t.Errorf("%s: --model-runtime %q --pjrt-plugin %q, want pjrt and the image's plugin", comp, got, plugin)
			}
			if !strings.HasSuffix(c.Image, "-pjrt") || c.Resources.Limits["nvidia.com/gpu"] != "1" {
				t.Errorf("%s: image %s, GPU limit %q; want the -pjrt variant on a GPU", comp, c.Image, c.Resources.Limits["nvidia.com/gpu"])
			}
			checkCommandLine(t, r, comp, d.Spec.Template.Spec, c)
		}
	})
	t.Run("generate-disabled", func(t *testing.T) {
		r := render(t, helm, "--set", "generate.enabled=false", "--set", "metrics.serviceMonitor.enabled=true")
		for _, m := range r.all {
			if m.Metadata.Labels["app.kubernetes.io/component"] == "generate" {
				t.Errorf("generate.enabled=false still renders %s %s", m.Kind, m.Metadata.Name)
			}
		}
		r.deployment(t, "understand")
	})
	t.Run("generate-image-follows-understand", func(t *testing.T) {
		// The generate pods run the understand image: its repository and tag, unless
		// generate.image names another.
		r := render(t, helm, "--set", "understand.image.repository=my-understand", "--set", "understand.image.tag=1.2.3-gpu")
		if u, g := r.deployment(t, "understand").Spec.Template.Spec.Containers[0].Image, r.deployment(t, "generate").Spec.Template.Spec.Containers[0].Image; u != g || u != "my-understand:1.2.3-gpu" {
			t.Errorf("understand image %s, generate image %s: want both my-understand:1.2.3-gpu", u, g)
		}
		r = render(t, helm, "--set", "generate.image.repository=my-generate", "--set", "generate.image.tag=4.5.6")
		if g := r.deployment(t, "generate").Spec.Template.Spec.Containers[0].Image; g != "my-generate:4.5.6" {
			t.Errorf("generate image %s, want my-generate:4.5.6 (generate.image)", g)
		}
	})

	t.Run("notes", func(t *testing.T) {
		notes := renderNotes(t, helm)
		for _, want := range []string{
			"kubectl -n pacs get service pacsflow-ingest -o jsonpath=", "DICOM port 11112", "-aec PACSFLOW",
			"WARNING: the allow-list still holds the placeholder",
			"kubectl -n pacs port-forward service/pacsflow-notify 8082:8082", "kubectl -n pacs get secret pacsflow-notify-auth",
			"NOT for clinical use",
			"kubectl -n pacs port-forward service/pacsflow-generate 8083:8083", "http://127.0.0.1:8083/v1/augmentations",
			"http://pacsflow-generate.pacs.svc:8083/v1/augmentations", "never clinical images",
		} {
			if !strings.Contains(notes, want) {
				t.Errorf("NOTES.txt does not say %q:\n%s", want, notes)
			}
		}
		notes = renderNotes(t, helm, "-f", allOptionsFile)
		for _, want := range []string{"{.nodePort}", "https://worklist.hospital.example/", "DICOM TLS",
			"service/pacsflow-generate 8083:9083", "policy nodule=synthesize:4"} {
			if !strings.Contains(notes, want) {
				t.Errorf("NOTES.txt with every option does not say %q:\n%s", want, notes)
			}
		}
	})

	// Values that render but could not run are refused, saying why.
	for _, tc := range []struct{ set, want string }{
		{"understand.modelRuntime=pjrt,understand.pjrtPlugin=", "understand.modelRuntime pjrt needs understand.pjrtPlugin"},
		{"understand.modelRuntime=onnx", "/understand/modelRuntime"},
		{"notify.auth.token.enabled=false", "notify needs a credential"},
		{"ingest.allow=null", "ingest.allow is empty"},
		{"ingest.tls.enabled=true", "ingest.tls.enabled needs ingest.tls.secretName"},
		{"understand.model.source=pvc", "needs understand.model.pvc.claimName"},
		{"generate.model.source=pvc", "needs generate.model.pvc.claimName"},
		{"generate.model.source=hostPath", "needs generate.model.hostPath.path"},
		{"generate.syntheticUIDRoot=1.2.03", "/generate/syntheticUIDRoot"},
		{"generate.batchWait=5", "/generate/batchWait"},
		{"ingest.service.type=ClusterIP", "/ingest/service/type"},
	} {
		out, err := run(helm, "template", release, chartDir, "--set", tc.set)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("helm template --set %s: err %v, want an error saying %q; output:\n%.2000s", tc.set, err, tc.want, out)
		}
	}
}

// checkRender checks one render of the chart against the values it was made with.
func checkRender(t *testing.T, r *rendered, v *values, flags map[string]map[string]bool) {
	for _, comp := range components {
		d := r.deployment(t, comp.name)
		pod := d.Spec.Template.Spec
		podLabels := d.Spec.Template.Metadata.Labels
		if !subset(d.Spec.Selector.MatchLabels, podLabels) {
			t.Errorf("%s: selector %v does not select its pods %v", comp.name, d.Spec.Selector.MatchLabels, podLabels)
		}
		if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
			// Service links put PACSFLOW_<SERVICE>_PORT=tcp://... into the environment,
			// where pacsflow reads its flags.
			t.Errorf("%s: enableServiceLinks must be false (service variables could be read as PACSFLOW_ flags)", comp.name)
		}
		if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken must be false (pacsflow never calls the Kubernetes API)", comp.name)
		}
		if pod.SecurityContext.SeccompProfile.Type != "RuntimeDefault" {
			t.Errorf("%s: pod seccompProfile %q, want RuntimeDefault", comp.name, pod.SecurityContext.SeccompProfile.Type)
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", comp.name, len(pod.Containers))
		}
		c := pod.Containers[0]
		if want := append([]string{binaryPath}, comp.cmd...); !slices.Equal(c.Command, want) {
			t.Errorf("%s: command %q, want %q", comp.name, c.Command, want)
		}
		checkSecurity(t, comp.name, pod, c)
		checkVolumes(t, comp.name, pod, c)

		// Every pacsflow flag the chart passes exists, and so does every PACSFLOW_ variable.
		for _, a := range c.Args {
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !strings.HasPrefix(a, "--") || !flags[comp.name][name] {
				t.Errorf("%s: argument %q is not a flag of pacsflow %s", comp.name, a, strings.Join(comp.cmd, " "))
			}
		}
		for _, e := range r.environment(t, c) {
			if slices.Contains(v.extraEnv(comp.name), e) {
				continue // the user's, e.g. a secret a webhook rule's password_env names
			}
			if f, ok := strings.CutPrefix(e, "PACSFLOW_"); ok && !flags[comp.name][strings.ToLower(strings.ReplaceAll(f, "_", "-"))] {
				t.Errorf("%s: environment variable %s names no flag of pacsflow %s", comp.name, e, strings.Join(comp.cmd, " "))
			}
		}

		checkCommandLine(t, r, comp.name, pod, c)

		// JetStream replicas and NATS from the values.
		if got := argValues(c.Args, "replicas"); !slices.Equal(got, []string{fmt.Sprint(v.Nats.StreamReplicas)}) {
			t.Errorf("%s: --replicas %q, want [%d] (nats.streamReplicas)", comp.name, got, v.Nats.StreamReplicas)
		}
		if got := argValues(c.Args, "nats-url"); !slices.Equal(got, []string{v.Nats.URL}) {
			t.Errorf("%s: --nats-url %q, want [%s]", comp.name, got, v.Nats.URL)
		}
		if got := argValues(c.Args, "storage"); !slices.Equal(got, []string{"objectstore"}) {
			t.Errorf("%s: --storage %q, want [objectstore]", comp.name, got)
		}

		// Health: the HTTP address, its port, the probes on it.
		if got := argValues(c.Args, "http-addr"); !slices.Equal(got, []string{fmt.Sprintf(":%d", comp.http)}) {
			t.Errorf("%s: --http-addr %q, want [:%d]", comp.name, got, comp.http)
		}
		if p := c.port("http"); p != comp.http {
			t.Errorf("%s: container port http %d, want %d", comp.name, p, comp.http)
		}
		for _, pr := range []struct {
			kind, path string
			p          *probe
		}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}, {"startup", "/healthz", c.StartupProbe}} {
			if pr.p == nil || pr.p.HTTPGet == nil || pr.p.HTTPGet.Path != pr.path || fmt.Sprint(pr.p.HTTPGet.Port) != "http" {
				t.Errorf("%s: %s probe %v, want GET %s on port http", comp.name, pr.kind, pr.p, pr.path)
			}
		}
		if c.Resources.Limits["memory"] == "" {
			t.Errorf("%s: no memory limit", comp.name)
		}

		// Metrics.
		a := d.Spec.Template.Metadata.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != fmt.Sprint(comp.http) || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("%s: pod annotations %v, want prometheus.io/scrape, port %d, path /metrics", comp.name, a, comp.http)
		}
		if s := r.service(t, comp.service); !subset(s.Spec.Selector, podLabels) || s.port("http").TargetPort != "http" {
			t.Errorf("%s: Service %s does not reach the pods' http port: selector %v, ports %+v", comp.name, comp.service, s.Spec.Selector, s.Spec.Ports)
		}

		// A disruption budget for every Deployment.
		found := false
		for _, m := range r.kind("PodDisruptionBudget") {
			var pdb struct {
				MaxUnavailable any `yaml:"maxUnavailable"`
				MinAvailable   any `yaml:"minAvailable"`
				Selector       struct {
					MatchLabels map[string]string `yaml:"matchLabels"`
				} `yaml:"selector"`
			}
			m.spec(t, &pdb)
			if len(pdb.Selector.MatchLabels) > 0 && subset(pdb.Selector.MatchLabels, podLabels) {
				found = true
				if m.APIVersion != "policy/v1" || (pdb.MaxUnavailable == nil && pdb.MinAvailable == nil) {
					t.Errorf("%s: PodDisruptionBudget %s: apiVersion %s, maxUnavailable %v, minAvailable %v", comp.name, m.Metadata.Name, m.APIVersion, pdb.MaxUnavailable, pdb.MinAvailable)
				}
			}
		}
		if !found {
			t.Errorf("%s: no PodDisruptionBudget selects its pods", comp.name)
		}
	}
	checkIngest(t, r, v)
	checkUnderstand(t, r, v)
	checkNotify(t, r, v)
	checkGenerate(t, r, v)
	checkServiceMonitor(t, r, v)
}

// checkCommandLine runs the container's command line with the static build: its arguments,
// its environment (ConfigMaps, Secrets, resource fields), the files of its ConfigMap and
// Secret volumes (under a temporary folder standing for /), and a NATS URL nothing answers
// at. pacsflow checks its flags, their values and the files it reads (the users file, the
// webhook rules and their secrets) before it connects to NATS: failing to connect is the
// proof that it took the rest.
func checkCommandLine(t *testing.T, r *rendered, comp string, pod podSpec, c container) {
	root := t.TempDir()
	const noNATS = "nats://127.0.0.1:1"
	dummy := "dummy-secret-for-the-deploy-test-0123456789"
	reroot := func(s string) string { return strings.ReplaceAll(s, "/etc/pacsflow/", root+"/etc/pacsflow/") }
	secretData := func(name, key string) (string, bool) {
		for _, s := range r.kind("Secret") {
			if s.Metadata.Name == name {
				b, err := base64.StdEncoding.DecodeString(s.Data[key])
				if err != nil {
					t.Errorf("Secret %s key %s: %v", name, key, err)
				}
				return string(b), true
			}
		}
		return dummy, false // an existing Secret, the user's
	}
	write := func(file, content string) {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(reroot(content)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range c.VolumeMounts {
		vol := pod.volume(m.Name)
		if vol == nil || !strings.HasPrefix(m.MountPath, "/etc/pacsflow/") {
			continue
		}
		dir := reroot(m.MountPath + "/")
		switch {
		case vol.Secret != nil:
			rendered := false
			for _, s := range r.kind("Secret") {
				if s.Metadata.Name == vol.Secret.SecretName {
					rendered = true
					for k := range s.Data {
						if len(vol.Secret.Items) == 0 {
							v, _ := secretData(s.Metadata.Name, k)
							write(filepath.Join(dir, k), v)
						}
					}
				}
			}
			for _, it := range vol.Secret.Items {
				v, _ := secretData(vol.Secret.SecretName, it.Key)
				write(filepath.Join(dir, it.Path), v)
			}
			if !rendered && len(vol.Secret.Items) == 0 {
				// An existing Secret: stand in for the files pacsflow is told of.
				for _, a := range c.Args {
					_, f, _ := strings.Cut(a, "=")
					if strings.HasPrefix(f, m.MountPath+"/") {
						write(reroot(f), dummy)
					}
				}
				for _, cm := range r.kind("ConfigMap") {
					for _, content := range cm.Data {
						for _, f := range regexp.MustCompile(regexp.QuoteMeta(m.MountPath)+`/[A-Za-z0-9._-]+`).FindAllString(content, -1) {
							write(reroot(f), dummy)
						}
					}
				}
			}
		case vol.ConfigMap != nil:
			if cm := r.find(t, "ConfigMap", vol.ConfigMap.Name); cm != nil {
				for k, v := range cm.Data {
					write(filepath.Join(dir, k), v)
				}
			}
		}
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			if cm := r.find(t, "ConfigMap", ef.ConfigMapRef.Name); cm != nil {
				for k, v := range cm.Data {
					env = append(env, k+"="+v)
				}
			}
		}
	}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.Name == "PACSFLOW_NATS_URL":
			v = noNATS
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			v, _ = secretData(e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		case e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil:
			v = "1073741824"
		}
		env = append(env, e.Name+"="+reroot(v))
	}
	args := slices.Clone(c.Command[1:]) // the pacsflow command: ingest, ..., generate serve
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--nats-url=") {
			a = "--nats-url=" + noNATS
		}
		args = append(args, reroot(a))
	}
	// With no NATS to answer, a service that accepted its command line
	// waits for one (as a pod started before its NATS cluster does) and
	// says so; it is then stopped.
	cmd := exec.Command(staticBinary(t), args...)
	cmd.Env = env
	cmd.Dir = root
	var out syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	deadline := time.After(30 * time.Second)
wait:
	for !strings.Contains(out.String(), "waiting for NATS") {
		select {
		case err = <-done:
			break wait
		case <-deadline:
			err = errors.New("neither waiting for NATS nor exited within 30 s")
			break wait
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err == nil {
		_ = cmd.Process.Signal(os.Interrupt)
		err = <-done
		if err != nil && !strings.Contains(out.String(), "context canceled") {
			t.Errorf("%s: interrupted while waiting for NATS: %v\n%s", comp, err, out.String())
		}
		return
	}
	_ = cmd.Process.Kill()
	t.Errorf("%s: pacsflow %s with the chart's arguments, environment and files: %v, want it to wait for NATS:\n%s",
		comp, strings.Join(args, " "), err, out.String())
}

func checkSecurity(t *testing.T, name string, pod podSpec, c container) {
	nonRoot := pod.SecurityContext.RunAsNonRoot
	if c.SecurityContext.RunAsNonRoot != nil {
		nonRoot = c.SecurityContext.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		t.Errorf("%s: runAsNonRoot is not true", name)
	}
	if u := pod.SecurityContext.RunAsUser; u == nil || *u == 0 {
		t.Errorf("%s: runAsUser %v, want a non-root user", name, u)
	}
	sc := c.SecurityContext
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", name)
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: capabilities %+v, want drop [ALL] and nothing added", name, sc.Capabilities)
	}
	if c.mount("/tmp") == nil {
		t.Errorf("%s: no writable /tmp (the root filesystem is read-only)", name)
	}
}

// checkVolumes checks every mount names a volume of the pod.
func checkVolumes(t *testing.T, name string, pod podSpec, c container) {
	for _, m := range c.VolumeMounts {
		if pod.volume(m.Name) == nil {
			t.Errorf("%s: mount %s at %s names no volume", name, m.Name, m.MountPath)
		}
	}
}

func checkIngest(t *testing.T, r *rendered, v *values) {
	d := r.deployment(t, "ingest")
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 || *d.Spec.Replicas != v.Ingest.Replicas {
		t.Errorf("ingest: replicas %v, want %d (2 at least)", d.Spec.Replicas, v.Ingest.Replicas)
	}
	if got := argValues(c.Args, "dicom-addr"); !slices.Equal(got, []string{":11112"}) {
		t.Errorf("ingest: --dicom-addr %q, want [:11112]", got)
	}
	if p := c.port("dicom"); p != 11112 {
		t.Errorf("ingest: container port dicom %d, want 11112", p)
	}

	// The DICOM Service.
	s := r.service(t, release+"-ingest")
	if s.Spec.Type != v.Ingest.Service.Type || !subset(s.Spec.Selector, d.Spec.Template.Metadata.Labels) {
		t.Errorf("ingest Service: type %s (want %s), selector %v", s.Spec.Type, v.Ingest.Service.Type, s.Spec.Selector)
	}
	if s.Spec.ExternalTrafficPolicy != "Local" {
		t.Errorf("ingest Service: externalTrafficPolicy %q, want Local (the AE@ADDR allow-list needs the senders' addresses)", s.Spec.ExternalTrafficPolicy)
	}
	if p := s.port("dicom"); p.Port != 11112 || p.TargetPort != "dicom" {
		t.Errorf("ingest Service: port dicom %+v, want 11112 → dicom", p)
	}
	if s.port("http").Port != 0 {
		t.Error("ingest Service exposes the HTTP port (metrics, pprof) beyond the cluster")
	}
	if v.Ingest.Service.Type == "NodePort" && fmt.Sprint(s.port("dicom").NodePort) != fmt.Sprint(v.Ingest.Service.NodePort) {
		t.Errorf("ingest Service: nodePort %d, want %v", s.port("dicom").NodePort, v.Ingest.Service.NodePort)
	}

	// DICOM access from the ConfigMap.
	var cm *manifest
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef != nil {
			cm = r.find(t, "ConfigMap", ef.ConfigMapRef.Name)
		}
	}
	if cm == nil {
		t.Error("ingest: no ConfigMap in envFrom (the DICOM access settings)")
	} else {
		if got, want := cm.Data["PACSFLOW_ALLOW"], strings.Join(v.Ingest.Allow, ","); got != want {
			t.Errorf("ingest: PACSFLOW_ALLOW %q, want %q (ingest.allow)", got, want)
		}
		if got := cm.Data["PACSFLOW_AE"]; got != v.Ingest.AE {
			t.Errorf("ingest: PACSFLOW_AE %q, want %q", got, v.Ingest.AE)
		}
		if d.Spec.Template.Metadata.Annotations["checksum/config"] == "" {
			t.Error("ingest: no checksum/config annotation: a changed allow-list would not roll the pods")
		}
	}

	// The pseudonymization key: one Secret, mounted into every ingest pod.
	keySecret := v.Analytics.Key.ExistingSecret
	if keySecret == "" {
		keySecret = release + "-analytics-key"
		s := r.find(t, "Secret", keySecret)
		if s != nil && s.Metadata.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("Secret %s: want helm.sh/resource-policy keep (a new key changes every pseudonym)", keySecret)
		}
	}
	r.checkSecretFile(t, "ingest", pod, c, "analytics-key-file", keySecret, v.Analytics.Key.SecretKey)

	// DICOM TLS.
	if v.Ingest.TLS.Enabled {
		if got := argValues(c.Args, "tls-addr"); !slices.Equal(got, []string{":2762"}) {
			t.Errorf("ingest: --tls-addr %q, want [:2762]", got)
		}
		r.checkSecretFile(t, "ingest", pod, c, "tls-cert", v.Ingest.TLS.SecretName, "tls.crt")
		r.checkSecretFile(t, "ingest", pod, c, "tls-key", v.Ingest.TLS.SecretName, "tls.key")
		if v.Ingest.TLS.ClientCA {
			r.checkSecretFile(t, "ingest", pod, c, "tls-client-ca", v.Ingest.TLS.SecretName, "ca.crt")
		}
		if p := c.port("dicom-tls"); p != 2762 {
			t.Errorf("ingest: container port dicom-tls %d, want 2762", p)
		}
		if p := s.port("dicom-tls"); p.Port != 2762 || p.TargetPort != "dicom-tls" {
			t.Errorf("ingest Service: port dicom-tls %+v, want 2762 → dicom-tls", p)
		}
	} else if len(argValues(c.Args, "tls-addr")) > 0 || s.port("dicom-tls").Port != 0 {
		t.Error("ingest: a TLS listener without ingest.tls.enabled")
	}
}

func checkUnderstand(t *testing.T, r *rendered, v *values) {
	d := r.deployment(t, "understand")
	c := d.Spec.Template.Spec.Containers[0]
	checkModelComponent(t, "understand", d, &v.Understand.modelValues)
	for flag, want := range map[string]string{
		"batch-size": fmt.Sprint(v.Understand.Batch.Size), "batch-wait": v.Understand.Batch.Wait,
		"studies": fmt.Sprint(v.Understand.Studies),
	} {
		if got := argValues(c.Args, flag); !slices.Equal(got, []string{want}) {
			t.Errorf("understand: --%s %q, want [%s]", flag, got, want)
		}
	}
}

func checkGenerate(t *testing.T, r *rendered, v *values) {
	d := r.deployment(t, "generate")
	c := d.Spec.Template.Spec.Containers[0]
	checkModelComponent(t, "generate", d, &v.Generate.modelValues)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != v.Generate.Replicas {
		t.Errorf("generate: replicas %v, want %d", d.Spec.Replicas, v.Generate.Replicas)
	}
	// The understand image: TensorFlow and the model.
	if u := r.deployment(t, "understand").Spec.Template.Spec.Containers[0].Image; c.Image != u {
		t.Errorf("generate: image %s, want the understand image %s", c.Image, u)
	}
	flags := map[string]string{
		"generate-batch-size": fmt.Sprint(v.Generate.BatchSize), "generate-batch-wait": v.Generate.BatchWait,
		"generate-requests": fmt.Sprint(v.Generate.Requests), "generate-max-deliver": fmt.Sprint(v.Generate.MaxDeliver),
		"generate-policy": v.Generate.Policy, "synthetic-uid-root": v.Generate.SyntheticUIDRoot,
	}
	for flag, want := range flags {
		got := argValues(c.Args, flag)
		if want == "" {
			if len(got) > 0 {
				t.Errorf("generate: --%s %q, want none (its value is empty)", flag, got)
			}
		} else if !slices.Equal(got, []string{want}) {
			t.Errorf("generate: --%s %q, want [%s]", flag, got, want)
		}
	}
	// Its HTTP port for a RIS or a script: a ClusterIP Service, in no Ingress.
	s := r.service(t, release+"-generate")
	if s.Spec.Type != "ClusterIP" || s.port("http").Port != v.Generate.Service.Port {
		t.Errorf("generate Service: type %s, port http %d, want ClusterIP, %d", s.Spec.Type, s.port("http").Port, v.Generate.Service.Port)
	}
	for _, ing := range r.kind("Ingress") {
		b, err := yaml.Marshal(&ing.Spec)
		if err != nil || strings.Contains(string(b), release+"-generate") {
			t.Errorf("Ingress %s routes to the generate Service (its endpoints take no credential): %v\n%s", ing.Metadata.Name, err, b)
		}
	}
}

// checkModelComponent checks a Deployment that runs the model (understand, generate) with
// gpu.enabled: one GPU requested and limited, the GPU node selector and tolerations with the
// component's own, the -gpu image, the startup probe's allowance, and the model's directory
// from the image or a volume.
func checkModelComponent(t *testing.T, comp string, d *deployment, v *modelValues) {
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	for _, rl := range []struct {
		kind string
		m    map[string]string
	}{{"limits", c.Resources.Limits}, {"requests", c.Resources.Requests}} {
		if rl.m["nvidia.com/gpu"] != "1" {
			t.Errorf("%s: resources.%s[nvidia.com/gpu] %q, want 1", comp, rl.kind, rl.m["nvidia.com/gpu"])
		}
	}
	if pod.NodeSelector["nvidia.com/gpu.present"] != "true" {
		t.Errorf("%s: nodeSelector %v, want nvidia.com/gpu.present=true", comp, pod.NodeSelector)
	}
	for _, sel := range []map[string]string{v.GPU.NodeSelector, v.NodeSelector} {
		if len(sel) > 0 && !subset(sel, pod.NodeSelector) {
			t.Errorf("%s: nodeSelector %v, want %v in it", comp, pod.NodeSelector, sel)
		}
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl toleration) bool {
		return tl.Key == "nvidia.com/gpu" && tl.Operator == "Exists" && tl.Effect == "NoSchedule"
	}) {
		t.Errorf("%s: tolerations %+v, want nvidia.com/gpu Exists NoSchedule", comp, pod.Tolerations)
	}
	for _, tl := range append(slices.Clone(v.GPU.Tolerations), v.Tolerations...) {
		if !slices.Contains(pod.Tolerations, tl) {
			t.Errorf("%s: tolerations %+v, want %+v among them", comp, pod.Tolerations, tl)
		}
	}
	if !strings.HasSuffix(c.Image, "-gpu") {
		t.Errorf("%s: image %s, want the -gpu variant on GPU nodes", comp, c.Image)
	}
	if c.StartupProbe == nil || c.StartupProbe.FailureThreshold != v.StartupFailureThreshold {
		t.Errorf("%s: startup probe %v, want failureThreshold %d (the model's load)", comp, c.StartupProbe, v.StartupFailureThreshold)
	}
	if got := argValues(c.Args, "gpu-memory-growth"); !slices.Equal(got, []string{"true"}) {
		t.Errorf("%s: --gpu-memory-growth %q, want [true]", comp, got)
	}
	model := argValues(c.Args, "model")
	switch v.Model.Source {
	case "image":
		if !slices.Equal(model, []string{"/opt/pacsflow/model"}) {
			t.Errorf("%s: --model %q, want [/opt/pacsflow/model] (the model baked in the image)", comp, model)
		}
		if c.mount("/models") != nil {
			t.Errorf("%s: a model volume at /models with model.source image", comp)
		}
	case "pvc", "hostPath":
		want := path.Join("/models", v.Model.SubPath)
		if !slices.Equal(model, []string{want}) {
			t.Errorf("%s: --model %q, want [%s]", comp, model, want)
		}
		m := c.mount("/models")
		if m == nil || !m.ReadOnly {
			t.Fatalf("%s: the model volume is not mounted read-only at /models: %+v", comp, c.VolumeMounts)
		}
		vol := pod.volume(m.Name)
		switch {
		case v.Model.Source == "pvc" && (vol == nil || vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != v.Model.PVC.ClaimName):
			t.Errorf("%s: volume %s is not the claim %s: %+v", comp, m.Name, v.Model.PVC.ClaimName, vol)
		case v.Model.Source == "hostPath" && (vol == nil || vol.HostPath == nil || vol.HostPath.Path != v.Model.HostPath.Path):
			t.Errorf("%s: volume %s is not the host path %s: %+v", comp, m.Name, v.Model.HostPath.Path, vol)
		}
	default:
		t.Errorf("%s: model.source %q", comp, v.Model.Source)
	}
}

func checkNotify(t *testing.T, r *rendered, v *values) {
	d := r.deployment(t, "notify")
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	authSecret := v.Notify.Auth.ExistingSecret
	if authSecret == "" {
		authSecret = release + "-notify-auth"
	}
	// The token from the Secret, never as a flag.
	if len(argValues(c.Args, "auth-token")) > 0 {
		t.Error("notify: --auth-token on the command line (it shows in ps): use PACSFLOW_AUTH_TOKEN")
	}
	var tokenRef *keyRef
	for _, e := range c.Env {
		if e.Name == "PACSFLOW_AUTH_TOKEN" && e.ValueFrom != nil {
			tokenRef = e.ValueFrom.SecretKeyRef
		}
	}
	if tokenRef == nil || tokenRef.Name != authSecret || tokenRef.Key != v.Notify.Auth.Token.Key {
		t.Errorf("notify: PACSFLOW_AUTH_TOKEN from %+v, want Secret %s key %s", tokenRef, authSecret, v.Notify.Auth.Token.Key)
	} else if v.Notify.Auth.ExistingSecret == "" {
		if s := r.find(t, "Secret", authSecret); s != nil && s.Data[tokenRef.Key] == "" {
			t.Errorf("notify: Secret %s has no key %s", authSecret, tokenRef.Key)
		}
	}
	if v.Notify.Auth.Users.Enabled {
		r.checkSecretFile(t, "notify", pod, c, "auth-users", authSecret, v.Notify.Auth.Users.Key)
	}
	if s := r.service(t, release+"-notify"); s.port("http").Port != 8082 {
		t.Errorf("notify Service: port http %d, want 8082", s.port("http").Port)
	}

	// The webhook rules from a ConfigMap, their secrets files of a Secret.
	rulesFile := argValues(c.Args, "notify-rules")
	if len(v.Notify.Rules.Webhooks) == 0 {
		if len(rulesFile) > 0 {
			t.Errorf("notify: --notify-rules %q without rules", rulesFile)
		}
	} else {
		if len(rulesFile) != 1 {
			t.Fatalf("notify: --notify-rules %q, want one file", rulesFile)
		}
		m := c.mountOf(rulesFile[0])
		if m == nil {
			t.Fatalf("notify: no mount holds %s", rulesFile[0])
		}
		vol := pod.volume(m.Name)
		if vol == nil || vol.ConfigMap == nil {
			t.Fatalf("notify: %s is not from a ConfigMap: %+v", rulesFile[0], vol)
		}
		cm := r.find(t, "ConfigMap", vol.ConfigMap.Name)
		if cm == nil {
			return
		}
		var rules struct {
			Webhooks []struct {
				Name       string `json:"name"`
				SecretFile string `json:"secret_file"`
			} `json:"webhooks"`
		}
		if err := json.Unmarshal([]byte(cm.Data[path.Base(rulesFile[0])]), &rules); err != nil || len(rules.Webhooks) != len(v.Notify.Rules.Webhooks) {
			t.Fatalf("notify: the rules file in ConfigMap %s: %v, %d webhooks, want %d", cm.Metadata.Name, err, len(rules.Webhooks), len(v.Notify.Rules.Webhooks))
		}
		secret := v.Notify.WebhookSecrets.ExistingSecret
		if secret == "" {
			secret = release + "-webhook-secrets"
		}
		for _, w := range rules.Webhooks {
			if w.SecretFile != "" {
				r.checkSecretPath(t, "notify", pod, c, w.SecretFile, secret, path.Base(w.SecretFile))
			}
		}
	}

	// The Ingress: the page and the API, nothing served without credential.
	ings := r.kind("Ingress")
	if !v.Notify.Ingress.Enabled {
		if len(ings) > 0 {
			t.Errorf("an Ingress without notify.ingress.enabled")
		}
		return
	}
	if len(ings) != 1 {
		t.Fatalf("%d Ingresses, want 1", len(ings))
	}
	var ing struct {
		TLS []struct {
			Hosts      []string `yaml:"hosts"`
			SecretName string   `yaml:"secretName"`
		} `yaml:"tls"`
		Rules []struct {
			Host string `yaml:"host"`
			HTTP struct {
				Paths []struct {
					Path     string `yaml:"path"`
					PathType string `yaml:"pathType"`
					Backend  struct {
						Service struct {
							Name string `yaml:"name"`
							Port struct {
								Name string `yaml:"name"`
							} `yaml:"port"`
						} `yaml:"service"`
					} `yaml:"backend"`
				} `yaml:"paths"`
			} `yaml:"http"`
		} `yaml:"rules"`
	}
	ings[0].spec(t, &ing)
	if ings[0].APIVersion != "networking.k8s.io/v1" || len(ing.Rules) != 1 || ing.Rules[0].Host != v.Notify.Ingress.Host {
		t.Fatalf("Ingress: %s, rules %+v, want one rule for %s", ings[0].APIVersion, ing.Rules, v.Notify.Ingress.Host)
	}
	var paths []string
	for _, p := range ing.Rules[0].HTTP.Paths {
		paths = append(paths, p.Path+" "+p.PathType)
		if p.Backend.Service.Name != release+"-notify" || p.Backend.Service.Port.Name != "http" {
			t.Errorf("Ingress path %s goes to %+v, want the notify Service's http port", p.Path, p.Backend.Service)
		}
		for _, open := range []string{"/metrics", "/debug/pprof/", "/healthz"} {
			if p.PathType != "Exact" && strings.HasPrefix(open, p.Path) {
				t.Errorf("Ingress path %s %s routes %s (served without credential) out of the cluster", p.Path, p.PathType, open)
			}
		}
	}
	if want := []string{"/ Exact", "/ui/ Prefix", "/api/ Prefix"}; !slices.Equal(paths, want) {
		t.Errorf("Ingress paths %q, want %q", paths, want)
	}
	if v.Notify.Ingress.TLSSecretName != "" && (len(ing.TLS) != 1 || ing.TLS[0].SecretName != v.Notify.Ingress.TLSSecretName) {
		t.Errorf("Ingress TLS %+v, want Secret %s", ing.TLS, v.Notify.Ingress.TLSSecretName)
	}
	if got, want := argValues(c.Args, "public-url"), "https://"+v.Notify.Ingress.Host+"/"; !slices.Equal(got, []string{want}) {
		t.Errorf("notify: --public-url %q, want [%s]", got, want)
	}
}

func checkServiceMonitor(t *testing.T, r *rendered, v *values) {
	sms := r.kind("ServiceMonitor")
	if !v.Metrics.ServiceMonitor.Enabled {
		if len(sms) > 0 {
			t.Error("a ServiceMonitor without metrics.serviceMonitor.enabled")
		}
		return
	}
	if len(sms) != 1 || sms[0].APIVersion != "monitoring.coreos.com/v1" {
		t.Fatalf("ServiceMonitors %+v, want one of monitoring.coreos.com/v1", sms)
	}
	var sm struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	}
	sms[0].spec(t, &sm)
	if len(sm.Endpoints) != 1 || sm.Endpoints[0].Port != "http" || sm.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want port http, path /metrics", sm.Endpoints)
	}
	for k, want := range v.Metrics.ServiceMonitor.Labels {
		if sms[0].Metadata.Labels[k] != want {
			t.Errorf("ServiceMonitor label %s=%q, want %q", k, sms[0].Metadata.Labels[k], want)
		}
	}
	selected := map[string]bool{}
	for _, m := range r.kind("Service") {
		if len(sm.Selector.MatchLabels) > 0 && subset(sm.Selector.MatchLabels, m.Metadata.Labels) {
			selected[m.Metadata.Name] = true
		}
	}
	want := map[string]bool{}
	for _, comp := range components {
		want[comp.service] = true
	}
	if len(want) != 4 || fmt.Sprint(selected) != fmt.Sprint(want) {
		t.Errorf("the ServiceMonitor selects the Services %v, want %v", selected, want)
	}
}

// TestDockerfiles checks the images build what the chart runs: pacsflow at the path of the
// chart's command, as a non-root user, the ingest and notify images from the static build
// (which this test runs: the binary must come out static), the understand image from
// scripts/build.sh with the model the chart's default --model names, and every image from
// all the directories ./cmd/pacsflow is built from.
func TestDockerfiles(t *testing.T) {
	var quoted []string
	for _, a := range staticBuildArgs {
		if k, v, ok := strings.Cut(a, "="); ok && strings.Contains(v, " ") {
			a = k + `="` + v + `"`
		}
		quoted = append(quoted, a)
	}
	if got := "RUN CGO_ENABLED=0 " + strings.Join(quoted, " "); got != staticBuild {
		t.Fatalf("staticBuildArgs give %q, staticBuild is %q", got, staticBuild)
	}
	dirs := sourceDirs(t)
	for _, name := range []string{"ingest", "notify", "understand"} {
		file := filepath.Join("docker", name+".Dockerfile")
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		df := string(b)
		final := df[strings.LastIndex(df, "\nFROM "):]
		if !regexp.MustCompile(`(?m)^USER 65532:65532$`).MatchString(final) {
			t.Errorf("%s: the final stage does not run as USER 65532:65532", file)
		}
		if !regexp.MustCompile(`(?m)^COPY --from=build \S+ ` + regexp.QuoteMeta(binaryPath) + `$`).MatchString(final) {
			t.Errorf("%s: the final stage does not put pacsflow at %s (the chart's command)", file, binaryPath)
		}
		if !strings.Contains(df, `ENTRYPOINT ["`+binaryPath+`"]`) {
			t.Errorf("%s: ENTRYPOINT is not %s", file, binaryPath)
		}
		for _, d := range dirs {
			if !regexp.MustCompile(`(?m)^COPY ` + regexp.QuoteMeta(d) + `/ ` + regexp.QuoteMeta(d) + `/$`).MatchString(df) {
				t.Errorf("%s: does not copy %s/, which ./cmd/pacsflow is built from", file, d)
			}
		}
		if _, err := os.Stat(file + ".dockerignore"); err != nil {
			t.Errorf("%s: %v", file, err)
		}
		switch name {
		case "ingest", "notify":
			if !strings.Contains(final, "FROM gcr.io/distroless/static") {
				t.Errorf("%s: the final stage is not distroless static", file)
			}
			if got := buildLines(df); !slices.Equal(got, []string{staticBuild}) {
				t.Errorf("%s: build %q, want %q (the build this test runs)", file, got, staticBuild)
			}
		case "understand":
			if !strings.Contains(df, "./scripts/build.sh") || !strings.Contains(df, "COPY scripts/ scripts/") {
				t.Errorf("%s: does not build with scripts/build.sh, the tested local build", file)
			}
			if !strings.Contains(df, "ARG MODEL=model/reference") || !strings.Contains(final, "COPY ${MODEL} /opt/pacsflow/model") {
				t.Errorf("%s: does not bake model/reference in at /opt/pacsflow/model", file)
			}
			if _, err := os.Stat(filepath.Join("..", "model", "reference", "saved_model.pb")); err != nil {
				t.Errorf("%s: the model it bakes in: %v", file, err)
			}
		}
	}

	// The static build: its binary has no interpreter and no shared library.
	bin := staticBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the static build's binary asks for a dynamic loader")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the static build's binary needs %v", libs)
	}
}

// buildLines are the Dockerfile's lines that run go build.
func buildLines(df string) []string {
	var out []string
	for l := range strings.SplitSeq(df, "\n") {
		if strings.Contains(l, "go build") && !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// sourceDirs are the repository's top-level directories that hold a package ./cmd/pacsflow
// depends on.
func sourceDirs(t *testing.T) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/pacsflow")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for d := range strings.FieldsSeq(string(out)) {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			t.Fatal(err)
		}
		top, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
		if !slices.Contains(dirs, top) {
			dirs = append(dirs, top)
		}
	}
	slices.Sort(dirs)
	return dirs
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

// staticBinary builds pacsflow as the ingest and notify images do (staticBuildArgs), once.
func staticBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "pacsflow-deploy-test-"); buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "pacsflow")
		args := slices.Clone(staticBuildArgs)
		args[slices.Index(args, "/out/pacsflow")] = builtBin
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = ".."
		// The images' build environment: no cgo, no build tags (scripts/deps.sh's
		// need_tensorflow exports GOFLAGS=-tags=tensorflow).
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("CGO_ENABLED=0 %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// pacsflowFlags are the flags of each component's command (pacsflow ingest, understand,
// notify, generate serve), by component, read from its --help (of the static build: the
// flags are the same with and without TensorFlow).
func pacsflowFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	bin := staticBinary(t)
	flags := map[string]map[string]bool{}
	re := regexp.MustCompile(`^\s+-([a-z0-9-]+)`)
	for _, comp := range components {
		out, err := exec.Command(bin, append(slices.Clone(comp.cmd), "--help")...).CombinedOutput()
		if err != nil {
			t.Fatalf("pacsflow %s --help: %v\n%s", strings.Join(comp.cmd, " "), err, out)
		}
		flags[comp.name] = map[string]bool{}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				flags[comp.name][m[1]] = true
			}
		}
		if !flags[comp.name]["nats-url"] || !flags[comp.name]["replicas"] {
			t.Fatalf("pacsflow %s --help lists no --nats-url or --replicas:\n%s", strings.Join(comp.cmd, " "), out)
		}
	}
	return flags
}

// helmPath finds helm on PATH or where scripts/deps.sh's need_helm builds it.
func helmPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	p, err := filepath.Abs(filepath.Join("..", ".build", "bin", "helm"))
	if err == nil {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	t.Fatal("helm is not on PATH nor at .build/bin/helm: run ./scripts/test.sh (it builds helm)")
	return ""
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// render runs helm template and decodes the manifests.
func render(t *testing.T, helm string, args ...string) *rendered {
	t.Helper()
	args = append([]string{"template", release, chartDir, "--namespace", "pacs"}, args...)
	out, err := run(helm, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	r := &rendered{}
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if err == io.EOF {
			break
		}
		var m manifest
		if err == nil {
			err = doc.Decode(&m)
		}
		if err != nil {
			t.Fatalf("helm %s: the output is not YAML: %v\n%s", strings.Join(args, " "), err, out)
		}
		if m.Kind != "" {
			checkSchema(t, &doc, &m)
			r.all = append(r.all, m)
		}
	}
	seen := map[string]bool{}
	for _, m := range r.all {
		if id := m.Kind + "/" + m.Metadata.Name; seen[id] {
			t.Errorf("%s rendered twice", id)
		} else {
			seen[id] = true
		}
	}
	return r
}

// renderNotes renders templates/NOTES.txt (helm template leaves it out): in a copy of the
// chart, through a ConfigMap whose data is the notes run through tpl.
func renderNotes(t *testing.T, helm string, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pacsflow")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(chartDir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes-under-test.txt"), notes, 0o644); err != nil {
		t.Fatal(err)
	}
	tmpl := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ tpl (.Files.Get \"notes-under-test.txt\") . | quote }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "zz-notes-under-test.yaml"), []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	args = append([]string{"template", release, dir, "--namespace", "pacs", "--show-only", "templates/zz-notes-under-test.yaml"}, args...)
	out, err := run(helm, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var cm manifest
	if err := yaml.Unmarshal([]byte(out), &cm); err != nil {
		t.Fatalf("the notes: %v\n%s", err, out)
	}
	return cm.Data["notes"]
}

// kubeDecoder decodes a manifest into the Kubernetes API's Go types (those
// its OpenAPI schemas are generated from; the Prometheus operator's for
// the ServiceMonitor), strictly: a field the API does not have, a value of
// the wrong type or a field given twice is an error. It stands in for a
// schema validator such as kubeconform, which needs the schemas downloaded.
// It cannot see what only an API server checks (required fields, ranges,
// references between objects); the checks of checkRender cover those that
// matter here.
var kubeDecoder = func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, networkingv1.AddToScheme, policyv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// checkSchema checks a rendered manifest against its kind's API type.
func checkSchema(t *testing.T, doc *yaml.Node, m *manifest) {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err == nil {
		_, _, err = kubeDecoder.Decode(b, nil, nil)
	}
	if err != nil {
		t.Errorf("%s %s (%s) does not validate against the Kubernetes API: %v", m.Kind, m.Metadata.Name, m.APIVersion, err)
	}
}

// The rendered manifests, as much of them as the test reads.

type rendered struct{ all []manifest }

type manifest struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Spec yaml.Node         `yaml:"spec"`
	Data map[string]string `yaml:"data"`
}

func (m *manifest) spec(t *testing.T, v any) {
	t.Helper()
	if err := m.Spec.Decode(v); err != nil {
		t.Fatalf("%s %s: spec: %v", m.Kind, m.Metadata.Name, err)
	}
}

func (r *rendered) kind(kind string) []*manifest {
	var out []*manifest
	for i := range r.all {
		if r.all[i].Kind == kind {
			out = append(out, &r.all[i])
		}
	}
	return out
}

func (r *rendered) find(t *testing.T, kind, name string) *manifest {
	t.Helper()
	for _, m := range r.kind(kind) {
		if m.Metadata.Name == name {
			return m
		}
	}
	t.Errorf("no %s %s rendered", kind, name)
	return nil
}

func (r *rendered) deployment(t *testing.T, component string) *deployment {
	t.Helper()
	m := r.find(t, "Deployment", release+"-"+component)
	if m == nil {
		t.FailNow()
	}
	d := &deployment{}
	m.spec(t, &d.Spec)
	if m.APIVersion != "apps/v1" || m.Metadata.Labels["app.kubernetes.io/component"] != component {
		t.Errorf("Deployment %s: apiVersion %s, labels %v", m.Metadata.Name, m.APIVersion, m.Metadata.Labels)
	}
	return d
}

func (r *rendered) service(t *testing.T, name string) *service {
	t.Helper()
	s := &service{}
	if m := r.find(t, "Service", name); m != nil {
		m.spec(t, &s.Spec)
	}
	return s
}

// environment lists the container's environment variables, those of its envFrom
// ConfigMaps included.
func (r *rendered) environment(t *testing.T, c container) []string {
	t.Helper()
	var names []string
	for _, e := range c.Env {
		names = append(names, e.Name)
	}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("envFrom %+v: only ConfigMaps are expected", ef)
			continue
		}
		if cm := r.find(t, "ConfigMap", ef.ConfigMapRef.Name); cm != nil {
			for k := range cm.Data {
				names = append(names, k)
			}
		}
	}
	return names
}

// checkSecretFile checks that the flag names one file, key of Secret secret, mounted.
func (r *rendered) checkSecretFile(t *testing.T, comp string, pod podSpec, c container, flag, secret, key string) {
	t.Helper()
	files := argValues(c.Args, flag)
	if len(files) != 1 {
		t.Errorf("%s: --%s %q, want one file (key %s of Secret %s)", comp, flag, files, key, secret)
		return
	}
	r.checkSecretPath(t, comp, pod, c, files[0], secret, key)
}

// checkSecretPath checks that file is key of Secret secret, mounted read-only.
func (r *rendered) checkSecretPath(t *testing.T, comp string, pod podSpec, c container, file, secret, key string) {
	t.Helper()
	m := c.mountOf(file)
	if m == nil {
		t.Errorf("%s: no mount holds %s", comp, file)
		return
	}
	vol := pod.volume(m.Name)
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != secret || !m.ReadOnly {
		t.Errorf("%s: %s is not from Secret %s, mounted read-only: mount %+v, volume %+v", comp, file, secret, m, vol)
		return
	}
	rel, _ := filepath.Rel(m.MountPath, file)
	if len(vol.Secret.Items) > 0 {
		if !slices.ContainsFunc(vol.Secret.Items, func(it keyToPath) bool { return it.Key == key && it.Path == rel }) {
			t.Errorf("%s: Secret volume %s does not project key %s to %s: %+v", comp, m.Name, key, rel, vol.Secret.Items)
		}
	} else if rel != key {
		t.Errorf("%s: %s is the Secret's key %s, want %s", comp, file, rel, key)
	}
	// A Secret the chart makes must hold the key (an existing one is the user's).
	for _, s := range r.kind("Secret") {
		if s.Metadata.Name == secret {
			if _, ok := s.Data[key]; !ok {
				t.Errorf("%s: Secret %s has no key %s", comp, secret, key)
			}
		}
	}
}

type deployment struct {
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	}
}

type podSpec struct {
	Containers                   []container       `yaml:"containers"`
	Volumes                      []volume          `yaml:"volumes"`
	NodeSelector                 map[string]string `yaml:"nodeSelector"`
	Tolerations                  []toleration      `yaml:"tolerations"`
	EnableServiceLinks           *bool             `yaml:"enableServiceLinks"`
	AutomountServiceAccountToken *bool             `yaml:"automountServiceAccountToken"`
	SecurityContext              struct {
		RunAsNonRoot   *bool `yaml:"runAsNonRoot"`
		RunAsUser      *int  `yaml:"runAsUser"`
		SeccompProfile struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
}

func (p podSpec) volume(name string) *volume {
	for i := range p.Volumes {
		if p.Volumes[i].Name == name {
			return &p.Volumes[i]
		}
	}
	return nil
}

type toleration struct {
	Key      string `yaml:"key"`
	Operator string `yaml:"operator"`
	Effect   string `yaml:"effect"`
}

type volume struct {
	Name   string `yaml:"name"`
	Secret *struct {
		SecretName string      `yaml:"secretName"`
		Items      []keyToPath `yaml:"items"`
	} `yaml:"secret"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	PersistentVolumeClaim *struct {
		ClaimName string `yaml:"claimName"`
	} `yaml:"persistentVolumeClaim"`
	HostPath *struct {
		Path string `yaml:"path"`
	} `yaml:"hostPath"`
}

type keyToPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
}

type keyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef     *keyRef `yaml:"secretKeyRef"`
			ResourceFieldRef *struct {
				Resource string `yaml:"resource"`
			} `yaml:"resourceFieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	StartupProbe   *probe `yaml:"startupProbe"`
	Resources      struct {
		Limits   map[string]string `yaml:"limits"`
		Requests map[string]string `yaml:"requests"`
	} `yaml:"resources"`
	SecurityContext struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
			Add  []string `yaml:"add"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []mount `yaml:"volumeMounts"`
}

type mount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
	FailureThreshold int `yaml:"failureThreshold"`
}

func (p *probe) String() string {
	switch {
	case p == nil:
		return "none"
	case p.HTTPGet == nil:
		return "not an HTTP GET"
	}
	return fmt.Sprintf("GET %s on port %v", p.HTTPGet.Path, p.HTTPGet.Port)
}

func (c container) port(name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func (c container) mount(dir string) *mount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dir {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// mountOf is the mount that holds file.
func (c container) mountOf(file string) *mount {
	for i := range c.VolumeMounts {
		if strings.HasPrefix(file, strings.TrimSuffix(c.VolumeMounts[i].MountPath, "/")+"/") {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

type service struct {
	Spec struct {
		Type                  string            `yaml:"type"`
		ExternalTrafficPolicy string            `yaml:"externalTrafficPolicy"`
		Selector              map[string]string `yaml:"selector"`
		Ports                 []servicePort     `yaml:"ports"`
	}
}

type servicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
	NodePort   int    `yaml:"nodePort"`
}

func (s *service) port(name string) servicePort {
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return p
		}
	}
	return servicePort{}
}

// argValues are the values of every --name=value in args.
func argValues(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// values are the chart values the checks compare with: values.yaml, then the given files
// over it (maps merged, lists replaced, as helm does).
type values struct {
	Nats struct {
		URL            string `yaml:"url"`
		StreamReplicas int    `yaml:"streamReplicas"`
	} `yaml:"nats"`
	Analytics struct {
		Key struct {
			ExistingSecret string `yaml:"existingSecret"`
			SecretKey      string `yaml:"secretKey"`
		} `yaml:"key"`
	} `yaml:"analytics"`
	Metrics struct {
		ServiceMonitor struct {
			Enabled bool              `yaml:"enabled"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"serviceMonitor"`
	} `yaml:"metrics"`
	Ingest struct {
		ExtraEnv []envName `yaml:"extraEnv"`
		Replicas int       `yaml:"replicas"`
		AE       string    `yaml:"ae"`
		Allow    []string  `yaml:"allow"`
		Service  struct {
			Type     string `yaml:"type"`
			NodePort any    `yaml:"nodePort"`
		} `yaml:"service"`
		TLS struct {
			Enabled    bool   `yaml:"enabled"`
			SecretName string `yaml:"secretName"`
			ClientCA   bool   `yaml:"clientCA"`
		} `yaml:"tls"`
	} `yaml:"ingest"`
	Understand struct {
		modelValues `yaml:",inline"`
		ExtraEnv    []envName `yaml:"extraEnv"`
		Batch       struct {
			Size int    `yaml:"size"`
			Wait string `yaml:"wait"`
		} `yaml:"batch"`
		Studies int `yaml:"studies"`
	} `yaml:"understand"`
	Generate struct {
		modelValues      `yaml:",inline"`
		ExtraEnv         []envName `yaml:"extraEnv"`
		Replicas         int       `yaml:"replicas"`
		BatchSize        int       `yaml:"batchSize"`
		BatchWait        string    `yaml:"batchWait"`
		Requests         int       `yaml:"requests"`
		MaxDeliver       int       `yaml:"maxDeliver"`
		Policy           string    `yaml:"policy"`
		SyntheticUIDRoot string    `yaml:"syntheticUIDRoot"`
		Service          struct {
			Port int `yaml:"port"`
		} `yaml:"service"`
	} `yaml:"generate"`
	Notify struct {
		ExtraEnv []envName `yaml:"extraEnv"`
		Auth     struct {
			ExistingSecret string `yaml:"existingSecret"`
			Token          struct {
				Key string `yaml:"key"`
			} `yaml:"token"`
			Users struct {
				Enabled bool   `yaml:"enabled"`
				Key     string `yaml:"key"`
			} `yaml:"users"`
		} `yaml:"auth"`
		Rules struct {
			Webhooks []map[string]any `yaml:"webhooks"`
		} `yaml:"rules"`
		WebhookSecrets struct {
			ExistingSecret string `yaml:"existingSecret"`
		} `yaml:"webhookSecrets"`
		Ingress struct {
			Enabled       bool   `yaml:"enabled"`
			Host          string `yaml:"host"`
			TLSSecretName string `yaml:"tlsSecretName"`
		} `yaml:"ingress"`
	} `yaml:"notify"`
}

type envName struct {
	Name string `yaml:"name"`
}

// modelValues are the values understand and generate share: the model, the GPU, where the
// pods go and how long the model may take to load.
type modelValues struct {
	Model struct {
		Source string `yaml:"source"`
		PVC    struct {
			ClaimName string `yaml:"claimName"`
		} `yaml:"pvc"`
		HostPath struct {
			Path string `yaml:"path"`
		} `yaml:"hostPath"`
		SubPath string `yaml:"subPath"`
	} `yaml:"model"`
	GPU struct {
		NodeSelector map[string]string `yaml:"nodeSelector"`
		Tolerations  []toleration      `yaml:"tolerations"`
	} `yaml:"gpu"`
	NodeSelector            map[string]string `yaml:"nodeSelector"`
	Tolerations             []toleration      `yaml:"tolerations"`
	StartupFailureThreshold int               `yaml:"startupFailureThreshold"`
}

// extraEnv are the names of a component's extraEnv.
func (v *values) extraEnv(component string) []string {
	env := map[string][]envName{"ingest": v.Ingest.ExtraEnv, "understand": v.Understand.ExtraEnv, "notify": v.Notify.ExtraEnv, "generate": v.Generate.ExtraEnv}[component]
	var names []string
	for _, e := range env {
		names = append(names, e.Name)
	}
	return names
}

func loadValues(t *testing.T, overrides ...string) *values {
	t.Helper()
	v := &values{}
	for _, f := range append([]string{filepath.Join(chartDir, "values.yaml")}, overrides...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return v
}
