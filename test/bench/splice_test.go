package main

import "testing"

func TestSplice(t *testing.T) {
	old := "# zeroscaler benchmarks\n\nintro\n\n## Machine\n\nold machine\n\n## N = 1,000\n\nold steady\n\n## Wake latency\n\nold wake\n\n### sub\n\nold sub\n\n## Bytes per cached workload\n\nold cache\n\n## Targets\n\nold targets\n\n## Flags\n\nold flags\n"
	for _, tc := range []struct {
		name, partial, want string
	}{
		{
			name:    "replace a section with its subsections",
			partial: "# zeroscaler benchmarks\n\nnew intro\n\n## Machine\n\nnew machine\n\n## Wake latency\n\nnew wake\n\n## Targets\n\nnew targets\n",
			want:    "# zeroscaler benchmarks\n\nintro\n\n## Machine\n\nold machine\n\n## N = 1,000\n\nold steady\n\n## Wake latency\n\nNOTE\n\nnew wake\n\n## Bytes per cached workload\n\nold cache\n\n## Targets\n\nold targets\n\n## Flags\n\nold flags\n",
		},
		{
			name:    "insert after the section that precedes it",
			partial: "# x\n\n## Method\n\nm\n\n## Wake latency\n\nnew wake\n\n## Herds\n\nnew herd\n\n### sleeps\n\nrows\n\n## Targets\n\nt\n",
			want:    "# zeroscaler benchmarks\n\nintro\n\n## Machine\n\nold machine\n\n## N = 1,000\n\nold steady\n\n## Wake latency\n\nNOTE\n\nnew wake\n\n## Herds\n\nNOTE\n\nnew herd\n\n### sleeps\n\nrows\n\n## Bytes per cached workload\n\nold cache\n\n## Targets\n\nold targets\n\n## Flags\n\nold flags\n",
		},
		{
			name:    "insert before the targets",
			partial: "# x\n\n## Method\n\nm\n\n## Herds\n\nnew herd\n\n## Targets\n\nt\n",
			want:    "# zeroscaler benchmarks\n\nintro\n\n## Machine\n\nold machine\n\n## N = 1,000\n\nold steady\n\n## Wake latency\n\nold wake\n\n### sub\n\nold sub\n\n## Bytes per cached workload\n\nold cache\n\n## Herds\n\nNOTE\n\nnew herd\n\n## Targets\n\nold targets\n\n## Flags\n\nold flags\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(splice([]byte(old), []byte(tc.partial), "NOTE")); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}
