#!/usr/bin/env bash
# Re-run every row of the comparison table, one run after another, then build the report.
#
#   scripts/reproduce_table.sh mini  [HYDRA_OVERRIDES...]   # CPU: mini_seq2seq, mini_attention,
#                                                           #      mini_transformer on Multi30k, two
#                                                           #      seeds each (20 min of training
#                                                           #      + test per run, ~2.5 h in all)
#   scripts/reproduce_table.sh wmt_sample [HYDRA_OVERRIDES...]  # CPU: the same three rows on the
#                                                           #      WMT14 sample (test: newstest2014),
#                                                           #      two seeds each, 30 min of training
#                                                           #      + test per run, ~3.5 h in all
#   scripts/reproduce_table.sh paper [HYDRA_OVERRIDES...]   # GPUs: luong2015_seq2seq,
#                                                           #      luong2015_attention,
#                                                           #      vaswani2017_base, vaswani2017_big
# Examples:
#   scripts/reproduce_table.sh mini trainer.max_time=00:00:05:00     # a shorter CPU budget
#   scripts/reproduce_table.sh paper trainer=ddp trainer.devices=8    # 8 GPUs (DDP) per run
#
# Overrides after SCALE go to every run. Each run writes runs/table_<scale>/<experiment>_seed<seed>/
# (results.json, config.yaml, checkpoints/, tensorboard/); the report goes to
# runs/table_<scale>/report/ (table.md, table.csv, *.png; seeds of a row are one table row).
# Environment:
#   NMTBENCH_TABLE_DIR   where the runs and the report go (default runs/table_<scale>;
#                        relative paths are relative to the repository root)
#   NMTBENCH_MULTI30K    Multi30k directory for the mini rows (default ../shared/data/multi30k)
#   NMTBENCH_WMT14_SAMPLE  WMT14-sample directory for the wmt_sample rows
#                        (default ../shared/data/wmt14_sample)
#   SEEDS                the seeds of every row (default "1234 4321" for mini and wmt_sample,
#                        "1234" for paper)
#   SKIP_DONE=1          skip a run whose directory already has a tested results.json
#   PARALLEL=1           start every run at once instead of one after another (each gets an
#                        equal share of the machine: OMP_NUM_THREADS defaults to 1). Runs side by
#                        side measure contention, not the models: the published table comes from
#                        sequential runs, each with the whole machine.
#   PYTHON               interpreter (default python)
# A failed run does not stop the others; the script exits non-zero if any run failed.
set -uo pipefail

usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -lt 1 ]]; then usage; exit 2; fi
SCALE=$1; shift
case "$SCALE" in
  mini)  EXPERIMENTS=(mini_seq2seq mini_attention mini_transformer); DEFAULT_SEEDS="1234 4321" ;;
  wmt_sample) EXPERIMENTS=(wmt_sample_seq2seq wmt_sample_attention wmt_sample_transformer); DEFAULT_SEEDS="1234 4321" ;;
  paper) EXPERIMENTS=(luong2015_seq2seq luong2015_attention vaswani2017_base vaswani2017_big); DEFAULT_SEEDS="1234" ;;
  -h|--help) usage; exit 0 ;;
  *) echo "error: SCALE must be 'mini', 'wmt_sample' or 'paper', got '$SCALE'" >&2; usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."   # the repository root: configs and relative data paths resolve from here
PYTHON=${PYTHON:-python}
read -r -a SEED_LIST <<< "${SEEDS:-$DEFAULT_SEEDS}"
TABLE_DIR=${NMTBENCH_TABLE_DIR:-runs/table_$SCALE}
REPORT_DIR=$TABLE_DIR/report
mkdir -p "$TABLE_DIR"

failed=()
run_dirs=()
pids=()
run_one() {  # run_one EXPERIMENT RUN_DIR OVERRIDES...: one row, with its log and timing
  local exp=$1 run_dir=$2; shift 2
  local start; start=$(date +%s)
  if "$PYTHON" scripts/train.py "experiment=$exp" "hydra.run.dir=$run_dir" "$@"; then
    echo "== $exp finished in $(( ($(date +%s) - start) / 60 )) min"
  else
    local rc=$?
    echo "== $exp FAILED (exit $rc) after $(( ($(date +%s) - start) / 60 )) min; see $run_dir" >&2
    return 1
  fi
}
if [[ "${PARALLEL:-0}" == 1 ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
for seed in "${SEED_LIST[@]}"; do
  for exp in "${EXPERIMENTS[@]}"; do
    run_dir=$TABLE_DIR/${exp}_seed$seed
    run_dirs+=("$run_dir")
    if [[ "${SKIP_DONE:-0}" == 1 && -f $run_dir/results.json ]] \
       && grep -q '"test"' "$run_dir/results.json"; then
      echo "== $exp seed $seed: done already ($run_dir/results.json), skipped (SKIP_DONE=1)"
      continue
    fi
    echo "== $exp seed $seed -> $run_dir  ($(date '+%F %T'))"
    if [[ "${PARALLEL:-0}" == 1 ]]; then
      mkdir -p "$run_dir"
      run_one "$exp" "$run_dir" "seed=$seed" "$@" > "$run_dir.out" 2>&1 &
      pids+=("$!:${exp}_seed$seed")
    else
      run_one "$exp" "$run_dir" "seed=$seed" "$@" || failed+=("${exp}_seed$seed")
    fi
  done
done
for entry in "${pids[@]}"; do
  wait "${entry%%:*}" || failed+=("${entry#*:}")
  tail -n 1 "$TABLE_DIR/${entry#*:}.out"
done

echo "== report -> $REPORT_DIR"
"$PYTHON" scripts/report.py "${run_dirs[@]}" --out "$REPORT_DIR" --allow-missing
report_rc=$?

echo
if [[ $report_rc -eq 0 ]]; then
  abs_report=$(cd "$REPORT_DIR" && pwd)
  echo "Table: $abs_report/table.md (CSV: $abs_report/table.csv; plots: $abs_report/*.png)"
else
  echo "error: the report failed (exit $report_rc)" >&2
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "error: failed runs: ${failed[*]}" >&2
  exit 1
fi
exit $report_rc
