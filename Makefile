# The two README commands:
#   make demo   set up, then run the main job on the bundled data (no download)
#   make test   set up, then run every test (what .ci/run does)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-floor test-kaggle figures grid grid-baselines bench bench-gpu readme clean

# a virtual environment with the package (editable) and its dev tools; redone when the requirements change
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# the main job on the bundled data: train.ipynb through papermill, CPU-sized (tiny preset, scikit-learn digits)
# (no download). With only 359 val images early epochs move by many points, which would saturate the paper's ±5 reward
# clamp every epoch and swing β1, DropPath and the mixing probability back and forth (10_controller measures what each
# part costs): hence reward_clip 1.0, which also stops every LR boost, and twice the paper's LRs. explore_epochs 4 is the
# paper's "last 10 epochs" of 70 in proportion: the late push raises the LR over epochs 27-30. The executed notebook,
# runs/demo-digits.ipynb, shows the curves and the test top-1 of the best, EMA and SWA weights (summary.json); the exact
# numbers depend on the CPU's thread count (float sums in another order).
DEMO = runs/demo-digits
demo: install
	rm -rf $(DEMO) $(DEMO).ipynb && mkdir -p runs
	$(BIN)/papermill nbs/train.ipynb $(DEMO).ipynb --cwd . --log-output \
	  -p dataset digits -p preset tiny -p stem aggressive -p aug low -p epochs 30 -p batch_size 64 \
	  -p lr 1e-3 -p min_lr 1e-4 -p max_lr 1.2e-3 -p num_workers 0 -p run_name demo-digits \
	  -y "controller: {reward_clip: 1.0, explore_epochs: 4}"

# every figure and table of the paper, from the run logs in data/runs/ and the paper's numbers in data/paper/
figures: install
	mkdir -p runs && $(BIN)/papermill nbs/paper.ipynb runs/paper.ipynb --cwd .

# the paper's whole ablation grid at CPU size (41 runs on digits: every cell at 2 seeds, main and controller at 3; two at a time, one thread each), logs shipped to data/runs/cpu/
grid: install
	mkdir -p runs && OMP_NUM_THREADS=1 $(BIN)/papermill nbs/experiments.ipynb runs/experiments-cpu.ipynb --cwd nbs \
	  -p size cpu -p execute True -p ship True -p workers 2 -y "ablation_seeds: [0, 1]" \
	  -y "studies: [main, controller, stem, depth, version, head]"

# the baselines study at CPU size (16 runs on digits, 12 epochs, seed 0: Qonstraint 5.9 and tiny, ResNet-18, MobileNetV2,
# MobileViT-XXS, DeiT-Tiny, the SPT/LSA ViT, each with the controller on and off, and a distilled DeiT-Tiny), logs shipped to data/baselines/cpu/
grid-baselines: install
	mkdir -p runs && OMP_NUM_THREADS=1 $(BIN)/papermill nbs/experiments.ipynb runs/experiments-baselines.ipynb --cwd nbs \
	  -p size cpu -p execute True -p ship True -p workers 2 -p out_dir ../runs/grid-baselines -p ship_dir ../data/baselines/cpu \
	  -y "studies: [baselines]" -y "seeds: [0]" -y "overrides: {epochs: 12}"

# the speed benchmarks: a table and the machine, one JSON file in bench/results/ (a few minutes on 2 CPU cores; --full for
# larger sizes), then bench/RESULTS.md rendered from every file in bench/results/
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/report.py

# training and evaluation throughput option by option on a CUDA GPU (under 8 minutes; synthetic data, no download), one JSON
# file in bench/results/ (then bench/RESULTS.md rendered); without a GPU, its CPU-sized version (tiny preset, a few steps) in well under a minute
bench-gpu: install
	$(BIN)/python bench/gpu.py
	$(BIN)/python bench/report.py

# README.md, the front page, written from nbs/index.ipynb (tools/test.sh checks that it is in sync)
readme: install
	$(BIN)/python tools/readme.py

# `make test` (CI) also runs, on the two other sets of versions below, the notebooks that use the version-sensitive APIs
# of their pins: the data (scikit-learn, PIL, numpy), the timm baselines (09b: timm's Attention, VisionTransformer, meta-device
# builds), inference (safetensors, PIL) and the figures from the shipped runs (paper: pandas, matplotlib, seaborn). The whole
# suite three times over would not fit CI's time (each set takes about as long as the main suite, plus its build);
# `make test-floor` / `make test-kaggle` run all of it.
FLOOR_NBS  = 00c_decode 00d_tinyimagenet 01_data 09b_baselines 18_inference paper
KAGGLE_NBS = 00c_decode 00d_tinyimagenet 01_data paper
test: install
	PATH="$(abspath $(BIN)):$$PATH" bash tools/test.sh
	bash tools/test_env.sh floor $(FLOOR_NBS)
	bash tools/test_env.sh kaggle $(KAGGLE_NBS)

# every test on the lowest versions settings.ini declares (tools/requirements/floor.txt), in .venv-floor/; NBS="01_data ..." for some
test-floor: install
	bash tools/test_env.sh floor $(NBS)

# every test pinned like Kaggle's image (tools/requirements/kaggle.txt: matplotlib 3.7, numpy 1.26, IPython 7.34...), in .venv-kaggle/
test-kaggle: install
	bash tools/test_env.sh kaggle $(NBS)

clean:
	rm -rf $(VENV) .venv-floor .venv-kaggle *.egg-info _proc _docs
