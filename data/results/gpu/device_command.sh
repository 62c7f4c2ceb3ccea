export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MPLBACKEND=agg TQDM_MININTERVAL=10; T0=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
rm -rf runs/rehearsal; timeout 150 python3 -m hart_mini pipeline --preset gpu --rehearse --out runs/rehearsal >/tmp/reh.log 2>&1; rr=$?
{ echo "== rehearsal on this GPU: rc $rr in $((SECONDS-T0)) s =="; grep -iE "error|fail|check|status|pipeline:" /tmp/reh.log | tail -30; echo "== pipeline =="; } | tee "$OUT"/pipeline.log
if [ $rr -ne 0 ] && [ $rr -ne 124 ]; then tail -60 /tmp/reh.log >>"$OUT"/pipeline.log; tail -60 /tmp/reh.log; exit 10; fi
LEFT=$((570-SECONDS+T0)); BUD=$(python3 -c "print(round(($LEFT-140)/60,2))"); echo "pipeline: timeout $LEFT s, budget $BUD min"
RUN=runs/device; rm -rf "$RUN"
timeout $LEFT python3 -m hart_mini pipeline --preset gpu --budget-minutes $BUD --out "$RUN" 2>&1 | tee -a "$OUT"/pipeline.log; rc=${PIPESTATUS[0]}
for f in export/tokenizer_gpu.safetensors export/judge_gpu.safetensors export/hart_gpu.safetensors export/diffusion_gpu.safetensors results.json samples.png extras.tar.gz; do
  if [ -f "$RUN/$f" ]; then cp "$RUN/$f" "$OUT"/; else echo "not written: $f"; fi
done
ls -l "$OUT"; exit $rc
