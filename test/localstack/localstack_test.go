package localstack

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if got := modulePath(filepath.Join(root, "go.mod")); got != Module {
		t.Fatalf("module at %s = %q, want %q", root, got, Module)
	}
}

// shDaemon starts a shell script as a Daemon.
func shDaemon(t *testing.T, script string) *Daemon {
	t.Helper()
	d, err := StartDaemon("/bin/sh", filepath.Join(t.TempDir(), "daemon.log"), "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Kill() })
	return d
}

func TestDaemonStop(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		timeout  time.Duration
		wantCode int
		wantErr  error
	}{
		{
			name:     "exits on SIGTERM with its own code",
			script:   `trap 'echo bye; exit 3' TERM; echo ready; while :; do sleep 0.05; done`,
			timeout:  10 * time.Second,
			wantCode: 3,
		},
		{
			name:    "ended by SIGTERM",
			script:  `echo ready; exec sleep 60`,
			timeout: 10 * time.Second,
			wantErr: ErrSignaled,
		},
		{
			name:    "ignores SIGTERM",
			script:  `trap '' TERM; echo ready; while :; do sleep 0.05; done`,
			timeout: 300 * time.Millisecond,
			wantErr: ErrStopTimeout,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := shDaemon(t, tt.script)
			waitOutput(t, d, "ready")
			code, err := d.Stop(tt.timeout)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Stop() error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && code != tt.wantCode {
				t.Fatalf("Stop() code = %d, want %d", code, tt.wantCode)
			}
			select {
			case <-d.Done():
			default:
				t.Fatal("Done not closed after Stop")
			}
		})
	}
}

func TestDaemonOutputAndWait(t *testing.T) {
	d := shDaemon(t, `echo out; echo err >&2; exit 5`)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	code, err := d.Wait(ctx)
	if err != nil || code != 5 {
		t.Fatalf("Wait() = %d, %v; want 5, nil", code, err)
	}
	for _, want := range []string{"out\n", "err\n"} {
		if !strings.Contains(d.Output(), want) {
			t.Errorf("Output() = %q, want it to contain %q", d.Output(), want)
		}
	}
	file, err := os.ReadFile(d.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(file) != d.Output() {
		t.Errorf("log file %q differs from Output() %q", file, d.Output())
	}
}

func TestDaemonKill(t *testing.T) {
	d := shDaemon(t, `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
	waitOutput(t, d, "ready")
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Wait(t.Context()); !errors.Is(err, ErrSignaled) {
		t.Fatalf("Wait() after Kill error = %v, want %v", err, ErrSignaled)
	}
	if err := d.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
}

func waitOutput(t *testing.T, d *Daemon, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.Output(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q never contained %q", d.Output(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchdog(t *testing.T) {
	tests := []struct {
		name       string
		disarm     bool
		wantKilled bool
	}{
		{name: "kills when the parent dies", disarm: false, wantKilled: true},
		{name: "leaves processes alone when disarmed", disarm: true, wantKilled: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			victim := exec.Command("sleep", "60")
			if err := victim.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() {
				_ = victim.Wait()
				close(exited)
			}()
			t.Cleanup(func() {
				_ = victim.Process.Kill()
				<-exited
			})

			dir := filepath.Join(t.TempDir(), "stack")
			if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
				t.Fatal(err)
			}
			wd, err := startWatchdog([]int{victim.Process.Pid}, dir, "")
			if err != nil {
				t.Fatal(err)
			}
			if tt.disarm {
				if err := wd.disarm(); err != nil {
					t.Fatal(err)
				}
			} else {
				// What the kernel does when this process dies.
				wd.w.Close()
				_ = wd.cmd.Wait()
			}
			select {
			case <-exited:
				if !tt.wantKilled {
					t.Fatal("process died, want it alive")
				}
			case <-time.After(500 * time.Millisecond):
				if tt.wantKilled {
					t.Fatal("process still alive, want it killed")
				}
			}
			_, err = os.Stat(dir)
			if removed := errors.Is(err, os.ErrNotExist); removed != tt.wantKilled {
				t.Fatalf("directory removed = %v (stat: %v), want %v", removed, err, tt.wantKilled)
			}
		})
	}
}

func TestChildPIDsFindsEnvtestNames(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(fake, data, 0o755); err != nil {
		t.Fatal(err)
	}
	before := childPIDs()
	cmd := exec.Command(fake, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	got := newPIDs(before, childPIDs())
	if len(got) != 1 || got[0] != cmd.Process.Pid {
		t.Fatalf("new envtest-like children = %v, want [%d]", got, cmd.Process.Pid)
	}
}

func TestScrapeJobValidation(t *testing.T) {
	tests := []struct {
		name    string
		jobs    []ScrapeJob
		wantErr bool
	}{
		{name: "extra job", jobs: []ScrapeJob{{Name: "daemon", Targets: []string{"127.0.0.1:1"}}}},
		{name: "clashes with a built-in job", jobs: []ScrapeJob{{Name: ExporterJob, Targets: []string{"127.0.0.1:1"}}}, wantErr: true},
		{name: "no targets", jobs: []ScrapeJob{{Name: "daemon"}}, wantErr: true},
		{name: "duplicate", jobs: []ScrapeJob{
			{Name: "a", Targets: []string{"127.0.0.1:1"}},
			{Name: "a", Targets: []string{"127.0.0.1:2"}},
		}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p, err := newPromServer("prometheus", MetricsOptions{Backend: Prometheus2}, dir, "127.0.0.1:9", tt.jobs)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("newPromServer() error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			cfg, err := os.ReadFile(p.configPath)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"scrape_interval: 1s", "evaluation_interval: 1s",
				"job_name: " + PrometheusJob, "job_name: " + ExporterJob, "job_name: daemon", "127.0.0.1:9"} {
				if !strings.Contains(string(cfg), want) {
					t.Errorf("config lacks %q:\n%s", want, cfg)
				}
			}
			if promtool, err := exec.LookPath("promtool"); err == nil {
				out, err := exec.Command(promtool, "check", "config", p.configPath).CombinedOutput()
				if err != nil {
					t.Errorf("promtool check config: %v\n%s", err, out)
				}
			}
		})
	}
}

// Each backend gets a configuration it accepts: the lab settings, or with
// DefaultSettings no global section at all, only each job's interval.
func TestBackendConfig(t *testing.T) {
	tests := []struct {
		name       string
		opts       MetricsOptions
		want       []string
		wantNot    []string
		wantArgs   []string
		prometheus bool // promtool can check it
	}{
		{
			name:       "prometheus 2, lab settings",
			opts:       MetricsOptions{Backend: Prometheus2},
			want:       []string{"scrape_interval: 1s", "evaluation_interval: 1s"},
			wantArgs:   []string{"--web.enable-lifecycle"},
			prometheus: true,
		},
		{
			name:       "prometheus 3, default settings",
			opts:       MetricsOptions{Backend: Prometheus3, DefaultSettings: true},
			want:       []string{"scrape_interval: 5s"},
			wantNot:    []string{"global", "evaluation_interval", "scrape_interval: 1s"},
			prometheus: true,
		},
		{
			name:       "prometheus 2, default settings, 15s",
			opts:       MetricsOptions{Backend: Prometheus2, DefaultSettings: true, ScrapeInterval: 15 * time.Second},
			want:       []string{"scrape_interval: 15s"},
			wantNot:    []string{"global", "evaluation_interval"},
			prometheus: true,
		},
		{
			name:     "victoriametrics, lab settings",
			opts:     MetricsOptions{Backend: VictoriaMetrics},
			want:     []string{"scrape_interval: 1s"},
			wantNot:  []string{"evaluation_interval"},
			wantArgs: []string{"-search.latencyOffset=1s", "-promscrape.config="},
		},
		{
			name:    "victoriametrics, default settings",
			opts:    MetricsOptions{Backend: VictoriaMetrics, DefaultSettings: true},
			want:    []string{"scrape_interval: 5s"},
			wantNot: []string{"global", "evaluation_interval", "latencyOffset"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newPromServer("x", tt.opts, t.TempDir(), "127.0.0.1:9", nil)
			if err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(p.configPath)
			if err != nil {
				t.Fatal(err)
			}
			cfg := string(data) + strings.Join(p.args(), " ")
			for _, want := range append(tt.want, tt.wantArgs...) {
				if !strings.Contains(cfg, want) {
					t.Errorf("config and arguments lack %q:\n%s", want, cfg)
				}
			}
			for _, not := range tt.wantNot {
				if strings.Contains(cfg, not) {
					t.Errorf("config and arguments hold %q:\n%s", not, cfg)
				}
			}
			if promtool, err := exec.LookPath("promtool"); err == nil && tt.prometheus {
				out, err := exec.Command(promtool, "check", "config", p.configPath).CombinedOutput()
				if err != nil {
					t.Errorf("promtool check config: %v\n%s", err, out)
				}
			}
		})
	}
}

func TestParseBackends(t *testing.T) {
	tests := []struct {
		in      string
		want    []Backend
		wantErr bool
	}{
		{in: "prometheus3", want: []Backend{Prometheus3}},
		{in: " prometheus2, victoriametrics ,", want: []Backend{Prometheus2, VictoriaMetrics}},
		{in: "", wantErr: true},
		{in: "cortex2", wantErr: true},
		{in: "prometheus3,prometheus3", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBackends(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseBackends(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ParseBackends(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
