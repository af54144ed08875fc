// Command demo tells zeroscaler's story on a real, local control plane:
// a shop of three Deployments (web, api, worker) in one group, with traffic
// to web only; then quiet, all three put to sleep at 0 together; all three
// woken, each to its own count, when traffic to web comes back. `make demo` runs it; `make demo-up` keeps the stack
// running for you to play with.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

const (
	namespace = "demo"
	workload  = "web"
	group     = "shop"
	// The question zeroscaler asks: requests per second at the "ingress"
	// over the last 10 seconds. `or vector(0)`: no series means no traffic.
	query     = `sum(rate(demo_ingress_requests_total{service="web"}[10s])) or vector(0)`
	threshold = "0.5"
	cooldown  = 20 * time.Second
	polling   = 2 * time.Second
)

func main() {
	up := flag.Bool("up", false, "start the stack, the daemon and the shop (web, api, worker), print how to use them, and run until SIGTERM")
	stateDir := flag.String("state-dir", ".demo", "with -up: where to write the environment file for `make demo-down` and your shell")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *up, *stateDir); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, up bool, stateDir string) error {
	say("starting etcd, kube-apiserver, kube-controller-manager and Prometheus on 127.0.0.1 …")
	ingress, err := startIngress()
	if err != nil {
		return err
	}
	defer ingress.close()

	stack, err := localstack.Start(ctx, localstack.Options{
		ScrapeJobs:        []localstack.ScrapeJob{{Name: "ingress", Targets: []string{ingress.addr}}},
		ControllerManager: true,
	})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping everything the demo started …")
		if err := stack.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop:", err)
		}
	}()

	say("building zeroscaler …")
	binary, err := localstack.BuildDaemon(stack.Dir)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(stack.RESTConfig)
	if err != nil {
		return err
	}
	if err := createShop(ctx, client); err != nil {
		return err
	}

	port, err := localstack.FreePort()
	if err != nil {
		return err
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", port)
	logPath := filepath.Join(stack.Dir, "zeroscaler.log")
	daemon, err := localstack.StartDaemon(binary, logPath,
		"--kubeconfig", stack.KubeconfigPath,
		"--prometheus-address", stack.PrometheusURL,
		"--watch-namespace", namespace,
		"--leader-elect=false",
		"--metrics-address", metricsAddr,
		"--log-format", "console",
	)
	if err != nil {
		return err
	}
	defer daemon.Stop(10 * time.Second) //nolint:errcheck // it is going away either way

	if up {
		return stayUp(ctx, stack, ingress, daemon, stateDir)
	}
	return tellStory(ctx, stack, client, ingress, daemon, metricsAddr)
}

// tellStory drives traffic through its phases and prints a line for every
// change, until the web Deployment has slept and woken again.
func tellStory(ctx context.Context, stack *localstack.Stack, client kubernetes.Interface, ingress *ingress, daemon *localstack.Daemon, metricsAddr string) error {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	say(fmt.Sprintf("zeroscaler runs (log: %s)", daemon.LogPath))
	say(fmt.Sprintf("group %q in namespace %s: web (3 replicas), api (2) and worker (1);\n           only web asks Prometheus:\n           %s\n           the shop sleeps when < %s for %s, checked every %s",
		group, namespace, query, threshold, cooldown, polling))
	say("note: the Deployment and ReplicaSet controllers run and create Pods, but no scheduler or kubelet\n           does, so the Pods stay Pending; spec.replicas is what zeroscaler sets")

	w, err := client.AppsV1().Deployments(namespace).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	defer w.Stop()
	events, err := client.CoreV1().Events(namespace).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	defer events.Stop()

	phase := "traffic"
	ingress.setRate(5)
	say("phase 1: traffic, 5 requests/s")
	phaseStart := time.Now()
	replicas := maps.Clone(shop)
	sleptAt, wokeAt := time.Time{}, time.Time{}
	state := ""
	status := time.NewTicker(5 * time.Second)
	defer status.Stop()
	second := time.NewTicker(time.Second) // moves the story on
	defer second.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the story did not finish: %w (daemon log: %s)", ctx.Err(), daemon.LogPath)
		case <-daemon.Done():
			return fmt.Errorf("zeroscaler exited early; its log:\n%s", daemon.Output())
		case ev, open := <-events.ResultChan():
			if !open {
				return errors.New("the event watch closed")
			}
			// The controllers' own Events (Pods created and deleted) are
			// left out: the story is zeroscaler's.
			if e, ok := ev.Object.(*corev1.Event); ok && ev.Type == watch.Added && e.Source.Component == "zeroscaler" {
				line(ctx, stack, replicas, fmt.Sprintf("zeroscaler: %s — %s", e.Reason, e.Message))
			}
		case ev, open := <-w.ResultChan():
			if !open {
				return errors.New("the deployment watch closed")
			}
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok || d.Spec.Replicas == nil || *d.Spec.Replicas == replicas[d.Name] {
				continue
			}
			replicas[d.Name] = *d.Spec.Replicas
			note := "no original-replicas annotation"
			if v, ok := d.Annotations["zeroscaler.io/original-replicas"]; ok {
				note = fmt.Sprintf("original-replicas annotation: %q", v)
			}
			line(ctx, stack, replicas, fmt.Sprintf("%s now has %d replicas (%s)", d.Name, *d.Spec.Replicas, note))
			switch {
			case phase == "quiet" && all(replicas, func(name string, n int32) bool { return n == 0 }):
				sleptAt = time.Now()
				phase = "asleep"
			case phase == "traffic again" && all(replicas, func(name string, n int32) bool { return n == shop[name] }):
				wokeAt = time.Now()
				phase = "awake"
			}
		case <-status.C:
			line(ctx, stack, replicas, "")
		case <-second.C:
			if s := daemonState(metricsAddr); s != "" && s != state {
				state = s
				line(ctx, stack, replicas, "zeroscaler: "+stateStory[s])
			}
		}
		switch {
		case phase == "traffic" && time.Since(phaseStart) > 15*time.Second:
			phase = "quiet"
			ingress.setRate(0)
			say(fmt.Sprintf("phase 2: quiet, no requests; zeroscaler waits for %s of idle readings", cooldown))
		case phase == "awake" && time.Since(wokeAt) > 3*time.Second:
			say("the shop slept at 0 together and came back together: web 3, api 2, worker 1, each exactly its own count. The end.")
			return nil
		case phase == "asleep" && time.Since(sleptAt) > 10*time.Second:
			phase = "traffic again"
			ingress.setRate(5)
			say("phase 3: traffic again, 5 requests/s")
		}
	}
}

// stayUp leaves everything running and tells how to use it.
func stayUp(ctx context.Context, stack *localstack.Stack, ingress *ingress, daemon *localstack.Daemon, stateDir string) error {
	ingress.setRate(5)
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	env := fmt.Sprintf("export KUBECONFIG=%s\nexport PROMETHEUS_URL=%s\nexport DEMO_TRAFFIC_URL=http://%s/traffic\nexport DEMO_PID=%d\n",
		stack.KubeconfigPath, stack.PrometheusURL, ingress.addr, os.Getpid())
	envPath := filepath.Join(stateDir, "env")
	if err := os.WriteFile(envPath, []byte(env), 0o644); err != nil {
		return err
	}
	defer os.Remove(envPath)
	fmt.Printf(`
The demo stack is up. In another shell:

  source %[1]s
  bin/kubectl get deploy -n %[2]s -w                        # watch replicas
  bin/kubectl get events -n %[2]s -w                        # watch what zeroscaler says
  curl -X POST "$DEMO_TRAFFIC_URL?rps=0"                    # stop the traffic (the shop sleeps after %[3]s)
  curl -X POST "$DEMO_TRAFFIC_URL?rps=5"                    # traffic again (the shop wakes)
  bin/kubectl annotate deploy/%[4]s -n %[2]s --overwrite zeroscaler.io/paused=true
  bin/kubectl annotate deploy/%[4]s -n %[2]s zeroscaler.io/query-   # let go of it
  curl -s "$PROMETHEUS_URL/api/v1/query" --data-urlencode 'query=%[5]s'

zeroscaler's log: %[6]s
Stop with: make demo-down
`, envPath, namespace, cooldown, workload, query, daemon.LogPath)
	select {
	case <-ctx.Done():
		return nil
	case <-daemon.Done():
		return fmt.Errorf("zeroscaler exited; its log:\n%s", daemon.Output())
	}
}

// shop is the demo's group: each member's name and replicas.
var shop = map[string]int32{"web": 3, "api": 2, "worker": 1}

// createShop creates the namespace and the shop's Deployments: all three in
// group "shop", only web with the query.
func createShop(ctx context.Context, client kubernetes.Interface) error {
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for _, name := range []string{"web", "api", "worker"} {
		annotations := map[string]string{"zeroscaler.io/group": group}
		if name == workload {
			annotations["zeroscaler.io/query"] = query
			annotations["zeroscaler.io/threshold"] = threshold
			annotations["zeroscaler.io/cooldown-period"] = cooldown.String()
			annotations["zeroscaler.io/polling-interval"] = polling.String()
		}
		replicas := shop[name]
		labels := map[string]string{"app": name}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Annotations: annotations},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "nginx"}}},
				},
			},
		}
		if _, err := client.AppsV1().Deployments(namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// all says whether ok holds for every member of the shop.
func all(replicas map[string]int32, ok func(name string, n int32) bool) bool {
	for name := range shop {
		if !ok(name, replicas[name]) {
			return false
		}
	}
	return true
}

// line prints one status line: time, each member's replicas, the metric as
// Prometheus has it now, and what happened.
func line(ctx context.Context, stack *localstack.Stack, replicas map[string]int32, what string) {
	rate := "?"
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if v, _, _, err := stack.PromAPI.Query(qctx, query, time.Now()); err == nil {
		if vec, ok := v.(model.Vector); ok && len(vec) == 1 {
			rate = strconv.FormatFloat(float64(vec[0].Value), 'f', 2, 64)
		}
	}
	fmt.Printf("%s  web=%d api=%d worker=%d  rate=%5s req/s  %s\n", time.Now().Format("15:04:05"),
		replicas["web"], replicas["api"], replicas["worker"], rate, what)
}

// stateStory explains each state the daemon reports in its
// zeroscaler_workloads metric.
var stateStory = map[string]string{
	"awake":   "awake: the rate is at or above the threshold (or unknown), so the cooldown keeps restarting",
	"idle":    fmt.Sprintf("idle: the rate is below the threshold; cooling down for %s before scaling to zero", cooldown),
	"asleep":  "asleep: waiting for the rate to reach the threshold again",
	"paused":  "paused: leaving the workload alone",
	"invalid": "invalid configuration: see the InvalidScalingConfig event",
}

// daemonState reads the shop's state from the daemon's /metrics: the state
// most of its workloads are in (the demo runs only the shop).
func daemonState(addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return ""
	}
	state, most := "", 0.0
	for _, m := range families["zeroscaler_workloads"].GetMetric() {
		if v := m.GetGauge().GetValue(); v > most {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" {
					state, most = l.GetValue(), v
				}
			}
		}
	}
	return state
}

func say(s string) { fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), s) }

// ingress stands in for an ingress controller: a traffic generator sends
// it requests, and it counts them per service for Prometheus.
type ingress struct {
	addr     string
	srv      *http.Server
	requests prometheus.Counter
	rate     atomic.Int64
	stop     chan struct{}
}

func startIngress() (*ingress, error) {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "demo_ingress_requests_total",
		Help:        "Requests the demo ingress served, by service.",
		ConstLabels: prometheus.Labels{"service": workload},
	})
	reg.MustRegister(requests)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	in := &ingress{addr: ln.Addr().String(), requests: requests, stop: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/web", func(w http.ResponseWriter, _ *http.Request) {
		requests.Inc()
		fmt.Fprintln(w, "hello from web")
	})
	mux.HandleFunc("/traffic", func(w http.ResponseWriter, r *http.Request) {
		rps, err := strconv.Atoi(r.URL.Query().Get("rps"))
		if r.Method != http.MethodPost || err != nil || rps < 0 || rps > 100 {
			http.Error(w, "POST /traffic?rps=N with 0 <= N <= 100", http.StatusBadRequest)
			return
		}
		in.setRate(int64(rps))
		fmt.Fprintf(w, "traffic now %d requests/s\n", rps)
	})
	in.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go in.srv.Serve(ln) //nolint:errcheck // ends with ErrServerClosed
	go in.generate()
	return in, nil
}

func (in *ingress) setRate(rps int64) { in.rate.Store(rps) }

// generate sends real HTTP requests to the ingress at the chosen rate.
func (in *ingress) generate() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var owed float64
	for {
		select {
		case <-in.stop:
			return
		case <-t.C:
		}
		owed += float64(in.rate.Load()) / 10
		for ; owed >= 1; owed-- {
			resp, err := http.Get("http://" + in.addr + "/web")
			if err == nil {
				io.Copy(io.Discard, resp.Body) //nolint:errcheck
				resp.Body.Close()
			}
		}
	}
}

func (in *ingress) close() {
	close(in.stop)
	in.srv.Close()
}
