# mmserve: the two commands a new user runs are `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MMSERVE_DATA_DIR ?= $(HOME)/.mmserve
export MMSERVE_DATA_DIR

include helm/tools.mk

.PHONY: serve test fuzz soak install audio-deps speech-deps train-speech eval-speech train-music train-music-harmony eval-music lint mlflow-ui train-captioning eval-captioning train-action eval-action bench clean

# Re-install only when the project's metadata changes.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed audio-deps speech-deps

# FluidSynth + a General MIDI soundfont render the music task's WAV answers (Debian packages).
# Installed when missing and possible; otherwise a warning (only format=wav needs them).
audio-deps:
	@if command -v fluidsynth >/dev/null 2>&1 && dpkg -s fluid-soundfont-gm >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends fluidsynth fluid-soundfont-gm >/dev/null) \
		|| echo "warning: could not install fluidsynth fluid-soundfont-gm; music format=wav will answer 503"; \
	else echo "warning: fluidsynth / fluid-soundfont-gm missing (not root or no apt-get); music format=wav will answer 503"; fi

# espeak-ng synthesises the speech task's training / test data (and the speech e2e clips).
# Installed when missing and possible; otherwise a warning (serving uses the bundled weights).
speech-deps:
	@if command -v espeak-ng >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null) \
		|| echo "warning: could not install espeak-ng; speech training / evaluation cannot make data"; \
	else echo "warning: espeak-ng missing (not root or no apt-get); speech training / evaluation cannot make data"; fi

serve: install
	$(BIN)/mmserve serve --host $(HOST) --port $(PORT)

test: install lint helm-tools
	$(BIN)/python -m pytest -q -ra --durations=15

# Fuzz every route of the server's OpenAPI document with schemathesis: >= 1,000 cases, a new
# seed each run; the case count and statuses go to $(MMSERVE_DATA_DIR)/fuzz-report.json.
# `make test` runs the same test with a bounded, fixed-seed budget (~220 cases).
fuzz: install
	MMSERVE_FUZZ_EXAMPLES=100 MMSERVE_FUZZ_RANDOM=1 MMSERVE_FUZZ_REPORT=$(MMSERVE_DATA_DIR)/fuzz-report.json \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/fuzz

# Soak: measure capacity, then offer twice that for 5 minutes (captioning + music) and check
# the excess is shed with 503 + Retry-After, nothing accepted is lost, and RSS / fds / threads
# hold. Writes bench/results/soak-<date>.{md,json}; `make test` runs a 20-second version.
soak: install
	$(BIN)/python -m bench.soak --duration-s 300 --out bench/results/soak-$$(date -u +%F)

lint: install
	$(BIN)/ruff check .

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MMSERVE_DATA_DIR)/mlflow.db \
		--default-artifact-root $(MMSERVE_DATA_DIR)/mlartifacts --host $(HOST) --port 5000

train-captioning: install
	$(BIN)/mmserve train captioning --output-dir plugins/captioning/weights --no-register

eval-captioning: install
	$(BIN)/mmserve eval captioning --model-dir plugins/captioning/weights

# The action task's bundled weights (see plugins/action/README.md), one thread:
# 1. motion input: 2,500 single-frame trunk-pretraining steps (pose and pose change), then 2,000
#    clip steps with one memory position per frame;
# 2. two regions per frame (left and right strips as separate memory positions), started from
#    stage 1, 4,140 s;
# 3. fine-tuning from stage 2 on fresh clips every epoch (clip_pool=0, seed 1), lr 4e-4, 4,500 s;
#    the best-on-validation model of each stage is kept.
# Then the no-temporal-encoder baseline on stage 1's trunk and decoder, 900 s.
train-action: install
	$(BIN)/mmserve train action --no-register --no-eval --output-dir /tmp/mmserve-action-motion --epochs 30 --batch-size 16 --lr 1.5e-3 \
		--set input=motion --set stem_stride=1 --set pretrain_steps=2500 --set freeze_stages=1 --set eval_every=200 \
		--set val_clips=200 --set time_budget_s=7300 --max-steps 2000
	$(BIN)/mmserve train action --no-register --no-eval --output-dir /tmp/mmserve-action-regions --epochs 30 --batch-size 16 --lr 1e-3 \
		--set input=motion --set regions=2 --set stem_stride=1 --set freeze_stages=1 \
		--set init_regions_from=/tmp/mmserve-action-motion --set eval_every=200 --set val_clips=200 --set time_budget_s=4140
	$(BIN)/mmserve train action --no-register --no-eval --output-dir plugins/action/weights --epochs 100 --batch-size 16 --lr 4e-4 --seed 1 \
		--set input=motion --set regions=2 --set stem_stride=1 --set freeze_stages=1 --set init_from=/tmp/mmserve-action-regions \
		--set clip_pool=0 --set warmup_steps=50 --set eval_every=200 --set val_clips=300 --set time_budget_s=4500
	$(BIN)/mmserve train action --no-register --no-eval --output-dir plugins/action/baseline --epochs 30 --batch-size 16 --lr 1e-3 \
		--set input=motion --set temporal=none --set stem_stride=1 --set freeze_stages=1 \
		--set init_from=/tmp/mmserve-action-motion --set init_parts=encoder.cnn,decoder --set eval_every=200 \
		--set val_clips=200 --set time_budget_s=900

eval-action: install
	$(BIN)/mmserve eval action --model-dir plugins/action/weights --no-log --write-metrics

# The music task's bundled weights (serial note head) and its Bernoulli baseline row.
train-music: install
	$(BIN)/mmserve train music --no-register --output-dir /tmp/mmserve-music-serial --epochs 300 --batch-size 32 --lr 3e-3 --set time_budget_minutes=55
	$(BIN)/mmserve train music --no-register --output-dir plugins/music/weights --epochs 300 --batch-size 32 --lr 1.5e-3 --set init_from=/tmp/mmserve-music-serial --set time_budget_minutes=12
	$(BIN)/mmserve train music --no-register --output-dir /tmp/mmserve-music-bernoulli --epochs 300 --batch-size 32 --lr 3e-3 --set head=bernoulli --set time_budget_minutes=35
	$(BIN)/mmserve train music --no-register --output-dir plugins/music/weights/bernoulli --epochs 300 --batch-size 32 --lr 3e-3 --set head=bernoulli --set init_from=/tmp/mmserve-music-bernoulli --set time_budget_minutes=18
	$(BIN)/mmserve train music --no-register --output-dir plugins/music/weights/bernoulli --epochs 300 --batch-size 32 --lr 1e-3 --set head=bernoulli --set init_from=plugins/music/weights/bernoulli --set dropout=0.1 --set time_budget_minutes=25

# The harmonisation model served by mode=harmonize (soprano -> alto/tenor/bass, 16th notes):
# small (322k parameters, 0.65 MB in fp16), 27-minute budget on one thread.
train-music-harmony: install
	$(BIN)/mmserve train music --no-register --output-dir plugins/music/weights/harmony --epochs 300 --batch-size 32 --lr 3e-3 \
		--set data=harmony --set crop=128 --set attention=location --set hidden_dim=128 --set embed_dim=64 \
		--set encoder_hidden_dim=64 --set memory_dim=64 --set note_hidden_dim=128 --set attn_dim=32 \
		--set time_budget_minutes=27 --set fp16=true

eval-music: install
	$(BIN)/mmserve eval music --model-dir plugins/music/weights --no-log

# The speech task's bundled weights (generates ~6,500 espeak-ng clips once into
# $(MMSERVE_DATA_DIR)/speech-data): 1,000 steps of listener CTC pretraining, then 18, 9 and 122
# minutes of joint training from them, then 100 minutes with 30,000 more clips, 8 minutes on a
# GPU and 100 on a CPU with fresh clips written meanwhile, 110 with a deeper listener, 95, 105 and 100 more, 95, 90, 90 and 90 on
# the served features, 8 more on a GPU, 85 on the CPU and 100 with two-sentence recordings,
# 100, 105 and 75 with random speakers, voice sources and accents, 72 with a listener grown again, 80 more,
# 85 with a listener grown once more, 95 with a fourth block, 100 and 100 with the speller widened twice, 97
# with every block widened and 100 with a fifth block,
# then the character LM and the decoding weights (see plugins/speech/README.md); then WER / CER
# beside pocketsphinx (the `eval` extra).
SPEECH_DEVICE ?= $(shell $(BIN)/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
SPEECH_RECIPE = --epochs 40 --batch-size 32 --set freq_masks=0 --set time_masks=0 --set dropout=0 --set max_length=120
# stages 12 on: the grown model trained on the features the server computes (normalised on the
# speech +- 0.2 s, half the clips with up to 0.5 s of background around them), two threads
SPEECH_SERVED_FEATURES = --epochs 300 --lr 3e-4 --set listener_blocks_4x=1 --set listener_blocks_8x=1 \
	--set listener_block_hidden=128 --set extra_train_clips=120000 --set extra_clip_processes=0 \
	--set ctc_pretrain_steps=0 --set warmup_steps=100 --set eval_every=400 --set curriculum_epochs=0 \
	--set stats_margin_s=0.2 --set edge_pad_seconds=0.5 --set edge_pad_prob=0.5 --set num_threads=2
# stages 24 on: the pool of stage 22 (40,000 random-speaker and 60,000 accented clips besides the
# extra and varied ones), 30 % two-sentence batches, 60 % of the clips with background around the
# speech, the best step chosen on val, new speakers and padded val
SPEECH_STAGE24_POOL = --set join_prob=0.3 --set join_gap_seconds=0.3 --set extra_train_clips=40000 \
	--set new_speaker_clips=40000 --set varied_speaker_clips=20000 --set accent_clips=60000 --set val_new_speakers=true \
	--set eval_every=800 --set edge_pad_prob=0.6 --set val_padded=true
train-speech: install
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-ctc $(SPEECH_RECIPE) --lr 3e-3 \
		--max-steps 1000 --set time_budget_minutes=39 --set ctc_pretrain_fraction=0.3 --set eval_every=250
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-joint $(SPEECH_RECIPE) --lr 2e-3 \
		--set init_from=/tmp/mmserve-speech-ctc --set ctc_pretrain_steps=0 --set warmup_steps=50 \
		--set time_budget_minutes=18 --set eval_every=200
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-joint3 $(SPEECH_RECIPE) --lr 2e-3 \
		--set init_from=/tmp/mmserve-speech-joint --set ctc_pretrain_steps=0 --set warmup_steps=50 \
		--set time_budget_minutes=9 --set eval_every=300 --set curriculum_epochs=0
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-joint4 $(SPEECH_RECIPE) --epochs 300 --lr 2e-3 \
		--set init_from=/tmp/mmserve-speech-joint3 --set ctc_pretrain_steps=0 --set warmup_steps=50 \
		--set time_budget_minutes=122 --set eval_every=400 --set curriculum_epochs=0
	# 30,000 more training clips (generated once, ~16 min), then 100 minutes on all 36,000
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-extra $(SPEECH_RECIPE) --epochs 300 --lr 1e-3 \
		--set init_from=/tmp/mmserve-speech-joint4 --set extra_train_clips=30000 --set ctc_pretrain_steps=0 \
		--set warmup_steps=50 --set time_budget_minutes=100 --set eval_every=400 --set curriculum_epochs=0
	# 8 minutes on a GPU (it ran on an H200 through bench/gpu/speech_train.sh), the machine's other
	# cores writing up to 200,000 fresh clips meanwhile; on a CPU the same command makes ~1/10 the steps
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-gpu $(SPEECH_RECIPE) --epochs 300 \
		--batch-size 256 --lr 1.5e-3 --device $(SPEECH_DEVICE) --set init_from=/tmp/mmserve-speech-extra \
		--set extra_train_clips=200000 --set extra_clip_processes=$$(( $$(nproc) > 3 ? $$(nproc) - 2 : 1 )) \
		--set data_workers=$$(nproc) --set ctc_pretrain_steps=0 --set warmup_steps=150 --set time_budget_minutes=8 \
		--set eval_every=300 --set curriculum_epochs=0 --set num_threads=2
	# 100 minutes on one core, one process writing fresh clips beside it (120,000 in all)
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s7 $(SPEECH_RECIPE) --epochs 300 --lr 5e-4 \
		--set init_from=/tmp/mmserve-speech-gpu --set extra_train_clips=120000 --set extra_clip_processes=1 \
		--set ctc_pretrain_steps=0 --set warmup_steps=50 --set time_budget_minutes=100 --set eval_every=400 \
		--set curriculum_epochs=0
	# 110 minutes on one core, the listener grown by two residual BiLSTM blocks (4x and 8x, 128 per
	# direction) that start as the identity, on the same 120,000 clips
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s8 $(SPEECH_RECIPE) --epochs 300 --lr 6e-4 \
		--set init_from=/tmp/mmserve-speech-s7 --set listener_blocks_4x=1 --set listener_blocks_8x=1 \
		--set listener_block_hidden=128 --set extra_train_clips=120000 --set extra_clip_processes=1 \
		--set ctc_pretrain_steps=0 --set warmup_steps=100 --set time_budget_minutes=110 --set eval_every=400 \
		--set curriculum_epochs=0
	# 95 more minutes on one core, the same model and clips (their features kept from stage 8)
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s9 $(SPEECH_RECIPE) --epochs 300 --lr 4e-4 \
		--set init_from=/tmp/mmserve-speech-s8 --set listener_blocks_4x=1 --set listener_blocks_8x=1 \
		--set listener_block_hidden=128 --set extra_train_clips=120000 --set extra_clip_processes=1 \
		--set ctc_pretrain_steps=0 --set warmup_steps=100 --set time_budget_minutes=95 --set eval_every=400 \
		--set curriculum_epochs=0
	# 105 more minutes on one core, the same settings
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s10 $(SPEECH_RECIPE) --epochs 300 --lr 4e-4 \
		--set init_from=/tmp/mmserve-speech-s9 --set listener_blocks_4x=1 --set listener_blocks_8x=1 \
		--set listener_block_hidden=128 --set extra_train_clips=120000 --set extra_clip_processes=1 \
		--set ctc_pretrain_steps=0 --set warmup_steps=100 --set time_budget_minutes=105 --set eval_every=400 \
		--set curriculum_epochs=0
	# 100 more minutes on one core at a lower peak lr (3e-4), the same model and clips
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s11 $(SPEECH_RECIPE) --epochs 300 --lr 3e-4 \
		--set init_from=/tmp/mmserve-speech-s10 --set listener_blocks_4x=1 --set listener_blocks_8x=1 \
		--set listener_block_hidden=128 --set extra_train_clips=120000 --set extra_clip_processes=1 \
		--set ctc_pretrain_steps=0 --set warmup_steps=100 --set time_budget_minutes=100 --set eval_every=400 \
		--set curriculum_epochs=0
	# 95 more minutes on two threads (the clips are written), on the features the server computes:
	# normalised on the speech +- 0.2 s, half the clips with up to 0.5 s of background around them
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s12 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s11 --set time_budget_minutes=95
	# 90 more minutes, the same settings
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s13 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s12 --set time_budget_minutes=90
	# and 90 more twice, the same settings again
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s14 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s13 --set time_budget_minutes=90
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s15 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s14 --set time_budget_minutes=90
	# 8.2 minutes on a GPU with the same model settings (it ran on an H200 through
	# bench/gpu/speech_train.sh, whose defaults are this stage), batch 256, the other cores writing
	# up to 200,000 fresh clips meanwhile; on a CPU the same command makes ~1/20 the steps
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s16 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--batch-size 256 --lr 8e-4 --device $(SPEECH_DEVICE) --set init_from=/tmp/mmserve-speech-s15 \
		--set extra_train_clips=200000 --set extra_clip_processes=$$(( $$(nproc) > 3 ? $$(nproc) - 2 : 1 )) \
		--set data_workers=$$(nproc) --set warmup_steps=150 --set eval_every=200 --set time_budget_minutes=8.2
	# and 85 more minutes on the CPU, the stage-15 settings
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s17 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s16 --set time_budget_minutes=85
	# 100 more with 30 % of the batches joined in pairs: recordings of two sentences
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s18 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s17 --set join_prob=0.3 --set join_gap_seconds=0.3 --set time_budget_minutes=100
	# 100 more with 40,000 clips of 200 random speakers (random_voices.py), validated on the val
	# sentences read by 200 other new speakers too
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s19 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s18 --set join_prob=0.3 --set join_gap_seconds=0.3 --set new_speaker_clips=40000 \
		--set val_new_speakers=true --set eval_every=800 --set time_budget_minutes=100
	# 105 more with 40,000 clips of 200 more random speakers who also vary in voice source (Klatt,
	# breath, tone, voicing)
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s20 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s19 --set join_prob=0.3 --set join_gap_seconds=0.3 --set new_speaker_clips=40000 \
		--set varied_speaker_clips=40000 --set val_new_speakers=true --set eval_every=800 --set time_budget_minutes=105
	# 75 more with 40,000 clips of 200 speakers with random accents of their own (sound shifts,
	# stress timing) beside a smaller pool of the earlier kinds (40,000 extra, 20,000 and 20,000
	# random speakers), the en-gb clips now with their speaker variants
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s21 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s20 --set join_prob=0.3 --set join_gap_seconds=0.3 --set extra_train_clips=40000 \
		--set new_speaker_clips=20000 --set varied_speaker_clips=20000 --set accent_clips=40000 --set val_new_speakers=true \
		--set eval_every=800 --set time_budget_minutes=75
	# 72 more with the listener grown by a second residual block after its 8x BiLSTM (identity
	# start; 1.06 M -> 1.36 M parameters), on a larger pool: 40,000 random speakers, 60,000 accented
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s22 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s21 --set listener_blocks_8x=2 --set join_prob=0.3 --set join_gap_seconds=0.3 \
		--set extra_train_clips=40000 --set new_speaker_clips=40000 --set varied_speaker_clips=20000 --set accent_clips=60000 \
		--set val_new_speakers=true --set eval_every=800 --set time_budget_minutes=72
	# 80 more on the same pool, 60 % of the clips (was 50 %) with background around the speech
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s23 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		--set init_from=/tmp/mmserve-speech-s22 --set listener_blocks_8x=2 --set join_prob=0.3 --set join_gap_seconds=0.3 \
		--set extra_train_clips=40000 --set new_speaker_clips=40000 --set varied_speaker_clips=20000 --set accent_clips=60000 \
		--set val_new_speakers=true --set eval_every=800 --set edge_pad_prob=0.6 --set time_budget_minutes=80
	# 85 more with a third residual block after the 8x BiLSTM (1.36 M -> 1.66 M parameters), the
	# best step chosen on the val clips padded with their background as well as on val and new speakers
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s24 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		$(SPEECH_STAGE24_POOL) --set init_from=/tmp/mmserve-speech-s23 --set listener_blocks_8x=3 --set time_budget_minutes=85
	# 95 more with a fourth block after the 8x BiLSTM (1.66 M -> 1.96 M parameters), the same pool and
	# criterion (its padded val clips now on the background shaped like each clip's floor)
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s25 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		$(SPEECH_STAGE24_POOL) --set init_from=/tmp/mmserve-speech-s24 --set listener_blocks_8x=4 --set time_budget_minutes=95
	# 100 more with the speller widened 128 -> 256 (the new units' outgoing weights start at zero,
	# grow.py; 1.96 M -> 2.28 M parameters), the same pool and criterion
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s26 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		$(SPEECH_STAGE24_POOL) --set init_from=/tmp/mmserve-speech-s25 --set listener_blocks_8x=4 --set speller_hidden=256 --set time_budget_minutes=100
	# 100 more with the speller widened again, 256 -> 384 (2.28 M -> 2.74 M parameters), the same pool and criterion
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s27 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		$(SPEECH_STAGE24_POOL) --set init_from=/tmp/mmserve-speech-s26 --set listener_blocks_8x=4 --set speller_hidden=384 --set time_budget_minutes=100
	# 97 more with every listener block widened 128 -> 160 units a direction (2.74 M -> 3.31 M parameters), the same pool and criterion
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir /tmp/mmserve-speech-s28 $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		$(SPEECH_STAGE24_POOL) --set init_from=/tmp/mmserve-speech-s27 --set listener_blocks_8x=4 --set listener_block_hidden=160 --set speller_hidden=384 --set time_budget_minutes=97
	# 100 more with a fifth residual block after the 8x BiLSTM (identity start; 3.31 M -> 3.72 M parameters), the same pool and criterion
	$(BIN)/mmserve train speech --no-register --no-eval --output-dir plugins/speech/weights $(SPEECH_RECIPE) $(SPEECH_SERVED_FEATURES) \
		$(SPEECH_STAGE24_POOL) --set init_from=/tmp/mmserve-speech-s28 --set listener_blocks_8x=5 --set listener_block_hidden=160 --set speller_hidden=384 --set time_budget_minutes=100
	# the character LM for shallow fusion, then the joint CTC/attention and LM weights, chosen
	# by beam WER on the val clips, as they are, padded with their background and read by new speakers, features normalised
	# on the speech (plugins/speech/README.md; the LM, off since stage 13, is not in the grid)
	$(BIN)/python -m mmserve.plugins.speech.lm --out plugins/speech/weights --sentences 200000
	$(BIN)/python -m mmserve.plugins.speech.tune --model-dir plugins/speech/weights --ctc-weights 0 0.1 0.2 0.3 --lm-weights 0 \
		--stats-margin-s 0.2 --padded --new-speakers --write

eval-speech: install
	$(BIN)/python -m pip install --quiet -e '.[eval]'
	MMSERVE_SPEECH_POCKETSPHINX_CLIPS=300 $(BIN)/mmserve eval speech --model-dir plugins/speech/weights --no-log --write-metrics

# Serving benchmark: mmserve vs LitServe, Ray Serve, plain FastAPI and the bare model.
# Writes bench/results/latest.{md,png,json}; BENCH_QUICK=1 for the reduced (<5 min) run.
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(BIN)/.bench-installed
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache
