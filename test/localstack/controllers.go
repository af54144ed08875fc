package localstack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Controllers are the kube-controller-manager controllers the stack runs:
// those that act on what zeroscaler writes (Deployments, their ReplicaSets,
// StatefulSets, HorizontalPodAutoscalers) and the garbage collector that
// removes what they own. Pods stay Pending: no scheduler and no kubelet run.
var Controllers = []string{"deployment", "replicaset", "statefulset", "horizontalpodautoscaling", "garbagecollector"}

// HPASyncPeriod is how often the stack's HPA controller looks at each
// HorizontalPodAutoscaler (15 s by default in a cluster).
const HPASyncPeriod = 2 * time.Second

// kcmLogTail is how much of the log errors and failed tests show.
const kcmLogTail = 16 << 10

// controllerManager is a running kube-controller-manager.
type controllerManager struct {
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// startControllerManager starts kube-controller-manager from binDir against
// the stack's API server, as the admin user, and waits until it is healthy.
func (s *Stack) startControllerManager(ctx context.Context, binDir string) error {
	path := filepath.Join(binDir, "kube-controller-manager")
	if !isExecutable(path) {
		return fmt.Errorf("find kube-controller-manager in %s (run make tools)", binDir)
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	logPath := filepath.Join(s.Dir, "kube-controller-manager.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open kube-controller-manager log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(path,
		"--kubeconfig="+s.KubeconfigPath,
		"--controllers="+strings.Join(Controllers, ","),
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(s.Dir, "kube-controller-manager"),
		"--horizontal-pod-autoscaler-sync-period="+HPASyncPeriod.String(),
		"--use-service-account-credentials=false",
		// With these (beta, on by default since 1.36) the ReplicaSet,
		// StatefulSet and HPA controllers wait until their informers have
		// seen their own last write. On this one-process stack that wait
		// often outlasted 30 s ("read version: 235 is not as new as written
		// version: 247 for group resource replicasets.apps"), which stalls
		// the scenarios without testing zeroscaler.
		"--feature-gates=StaleControllerConsistencyReplicaSet=false,StaleControllerConsistencyStatefulSet=false,StaleControllerConsistencyHPA=false",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start kube-controller-manager: %w", err)
	}
	kcm := &controllerManager{cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() {
		_ = cmd.Wait() // an exit is reported by waitHealthy or ignored by stop
		close(kcm.done)
	}()
	s.kcm = kcm
	return kcm.waitHealthy(ctx, fmt.Sprintf("https://%s/healthz", loopback(port)))
}

// waitHealthy waits until /healthz answers 200. /healthz needs no
// credentials; the certificate is self-signed.
func (c *controllerManager) waitHealthy(ctx context.Context, url string) error {
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // a local self-signed certificate
	}
	ctx, cancel := context.WithTimeout(ctx, controlPlaneTimeout)
	defer cancel()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("healthz: %s", resp.Status)
		}
		last = err
		select {
		case <-c.done:
			return fmt.Errorf("kube-controller-manager exited: %s", c.logTail())
		case <-ctx.Done():
			return fmt.Errorf("wait for kube-controller-manager: %w (last: %w); log: %s", ctx.Err(), last, c.logTail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 10 s.
func (c *controllerManager) stop() error {
	select {
	case <-c.done:
		return nil
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop kube-controller-manager: %w", err)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	return nil
}

// logTail is the end of the log, for errors.
func (c *controllerManager) logTail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > kcmLogTail {
		b = b[len(b)-kcmLogTail:]
	}
	return string(b)
}

// ControllerManagerLog is the end of kube-controller-manager's log, for a
// failed test; empty when the stack runs none.
func (s *Stack) ControllerManagerLog() string {
	if s.kcm == nil {
		return ""
	}
	return s.kcm.logTail()
}
