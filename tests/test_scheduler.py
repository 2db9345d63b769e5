"""The scheduler model, one rule at a time, on plain data: reuse, reload, load beside, the two kinds of
eviction and their order, spill, CPU-only hosts, an unknown budget and the rules before 0.30."""

from __future__ import annotations

import dataclasses
import math

import pytest

from policies.context import GpuDevice, GpuSnapshot, LoadedModel
from policies.memory import GIB, MIB, estimate, legacy_predicted_bytes, ollama_predicted_bytes
from policies.model import ModelFacts
from policies.scheduler import (
    MINIMUM_MEMORY_BYTES,
    Budget,
    Candidate,
    OllamaServer,
    Resident,
    after_load,
    largest_loadable_ctx,
    predict,
    predicted_action,
    side_by_side_ctx,
    working_set,
)
from tests.test_memory import gemma3_4b, gemma3_27b, gemma3_270m, llama31_8b

GPU_24 = Budget(free_bytes=24 * GIB, total_bytes=24 * GIB)
SERVER = OllamaServer()
CAP_2 = OllamaServer(max_loaded_models=2)


def resident(
    model: ModelFacts,
    num_ctx: int,
    *,
    keep_alive_s: float | None = None,
    busy: bool = False,
    path: str | None = None,
    server: OllamaServer = SERVER,
) -> Resident:
    """``model`` loaded fully on the GPU at ``num_ctx``, sized as ``/api/ps`` reports it."""
    load = estimate(model, num_ctx, server.num_parallel, server.kv_cache_type, version=server.version)
    size = load.total_bytes - (load.kv_full_bytes if load.kv_swa_bytes and server.llama_server else 0)
    return Resident(
        loaded=LoadedModel(
            name=model.name if ":" in model.name else f"{model.name}:latest",
            digest=model.digest or "",
            size_bytes=size,
            size_vram_bytes=size,
            context_length=num_ctx,
            expires_at=None,
        ),
        facts=model,
        keep_alive_s=keep_alive_s,
        busy=busy,
        model_path=path,
    )


def tiny(name: str, **overrides: object) -> ModelFacts:
    """A small llama-shaped model (1 GiB of weights) under another name."""
    return llama31_8b(name=name, weights_bytes=GIB, block_count=8, **overrides)


def free_with(budget: Budget, *residents: Resident) -> Budget:
    """``budget`` with the residents' real memory taken out of its free bytes."""
    held = 0
    for item in residents:
        assert item.facts is not None and item.loaded.context_length is not None
        held += estimate(item.facts, item.loaded.context_length).total_bytes
    assert budget.free_bytes is not None
    return dataclasses.replace(budget, free_bytes=budget.free_bytes - held)


class TestReuse:
    def test_same_model_and_context_is_reused(self) -> None:
        """A request for the loaded model at its loaded context loads nothing."""
        loaded = (resident(gemma3_4b(), 8192),)
        prediction = predict(Candidate(gemma3_4b(), 8192), loaded, free_with(GPU_24, *loaded), SERVER)
        assert (prediction.action, prediction.evicted, prediction.reloads, prediction.fits) == (
            "reuse",
            (),
            False,
            True,
        )

    def test_a_context_above_the_trained_length_is_clamped_first(self) -> None:
        """Asking 262144 of a model trained for 131072 and loaded there reuses it (needsReload clamps)."""
        loaded = (resident(gemma3_270m(), 32768),)
        prediction = predict(Candidate(gemma3_270m(), 262144), loaded, GPU_24, SERVER)
        assert prediction.action == "reuse" and prediction.num_ctx == 32768

    def test_names_sharing_a_blob_share_the_runner(self) -> None:
        """Another name for the same GGUF blob is served by the runner already loaded."""
        loaded = (resident(gemma3_270m(), 8192, path="/blobs/sha256-aa"),)
        other_name = gemma3_270m(name="gemma3-270m-b", digest="another-manifest")
        prediction = predict(
            Candidate(other_name, 8192, model_path="/blobs/sha256-aa"), loaded, GPU_24, SERVER
        )
        assert prediction.action == "reuse"

    def test_a_spilled_runner_is_reused_as_it_is(self) -> None:
        """Reuse keeps a spilled runner: it does not fit, and nothing changes that."""
        base = resident(gemma3_27b(), 131072)
        spilled = dataclasses.replace(
            base, loaded=dataclasses.replace(base.loaded, size_vram_bytes=20 * GIB, spilled=True)
        )
        prediction = predict(Candidate(gemma3_27b(), 131072), (spilled,), GPU_24, SERVER)
        assert prediction.action == "reuse" and prediction.fits is False
        assert prediction.spill_bytes == spilled.loaded.size_bytes - 20 * GIB


class TestReload:
    def test_another_context_replaces_the_runner(self) -> None:
        """The same model at another num_ctx unloads itself first and loads again."""
        loaded = (resident(gemma3_4b(), 2048),)
        budget = free_with(GPU_24, *loaded)
        prediction = predict(Candidate(gemma3_4b(), 8192), loaded, budget, SERVER)
        assert (prediction.action, prediction.reloads, prediction.evicted) == ("reload", True, ())

    def test_the_reload_frees_what_the_runner_held(self) -> None:
        """What the old runner held, its unreported full-attention cache included, is free for the new one."""
        model = gemma3_4b()
        old = resident(model, 2048)
        budget = free_with(GPU_24, old)
        prediction = predict(Candidate(model, 8192), (old,), budget, SERVER)
        assert budget.free_bytes is not None
        assert prediction.free_bytes == budget.free_bytes + estimate(model, 2048).total_bytes

    def test_automatic_against_automatic_never_reloads(self) -> None:
        """Two automatic contexts compare equal whatever their values (needsReload)."""
        loaded = (dataclasses.replace(resident(gemma3_4b(), 4096), num_ctx_auto=True),)
        prediction = predict(Candidate(gemma3_4b(), 32768, num_ctx_auto=True), loaded, GPU_24, SERVER)
        assert prediction.action == "reuse"


class TestLoadBeside:
    def test_a_small_model_loads_beside_another(self) -> None:
        """When Ollama's estimate plus surcharge stays within 80% of free, nothing is unloaded."""
        loaded = (resident(gemma3_270m(), 8192),)
        budget = free_with(GPU_24, *loaded)
        prediction = predict(Candidate(gemma3_4b(), 8192), loaded, budget, SERVER)
        assert (prediction.action, prediction.evicted, prediction.fits) == ("load", (), True)
        assert prediction.threshold_bytes is not None and budget.free_bytes is not None
        assert prediction.threshold_bytes == budget.free_bytes * 80 // 100
        assert prediction.preflight_bytes <= prediction.threshold_bytes

    def test_the_estimate_is_ollamas_own(self) -> None:
        """``ollama_estimate_bytes`` is PredictServerVRAM, not the real footprint."""
        prediction = predict(Candidate(gemma3_27b(), 8192), (), GPU_24, SERVER)
        assert prediction.ollama_estimate_bytes == ollama_predicted_bytes(gemma3_27b(), 8192)
        assert prediction.footprint == estimate(gemma3_27b(), 8192, n_ubatch=prediction.num_batch)

    def test_ollama_counts_the_loaded_runners_reported_sizes(self) -> None:
        """Free as Ollama sees it is at most the total less what /api/ps says is loaded."""
        loaded = (resident(gemma3_270m(), 8192),)
        generous = Budget(free_bytes=24 * GIB, total_bytes=24 * GIB)  # a driver that lags behind
        prediction = predict(Candidate(gemma3_4b(), 8192), loaded, generous, SERVER)
        assert prediction.threshold_bytes == (24 * GIB - loaded[0].loaded.size_vram_bytes) * 80 // 100


class TestEvictByPreflight:
    def test_ollamas_estimate_evicts_where_the_footprint_would_fit(self) -> None:
        """gemma3:27b at 8192 beside gemma3:4b: the SWA-blind estimate exceeds 80% of free."""
        loaded = (resident(gemma3_4b(), 8192),)
        budget = free_with(GPU_24, *loaded)
        assert budget.free_bytes is not None
        assert estimate(gemma3_27b(), 8192).total_bytes < budget.free_bytes - GIB  # it would fit
        prediction = predict(Candidate(gemma3_27b(), 8192), loaded, budget, SERVER)
        assert prediction.action == "evict" and prediction.fits is True
        (eviction,) = prediction.evicted
        assert (eviction.name, eviction.cause) == ("gemma3:4b", "preflight")
        assert eviction.threshold_bytes == budget.free_bytes * 80 // 100
        assert eviction.preflight_bytes is not None and eviction.preflight_bytes > eviction.threshold_bytes

    def test_evictions_continue_until_the_estimate_fits(self) -> None:
        """Each eviction frees memory and the check runs again; here one is enough of two."""
        a, b = resident(tiny("a"), 4096, keep_alive_s=60), resident(tiny("b"), 4096, keep_alive_s=600)
        budget = dataclasses.replace(free_with(GPU_24, a, b), free_bytes=6 * GIB)
        candidate = Candidate(llama31_8b(), 4096)
        prediction = predict(candidate, (a, b), budget, SERVER)
        assert prediction.evicted_names == ("a:latest",)
        assert prediction.free_bytes == 6 * GIB + prediction.evicted[0].freed_bytes

    def test_nothing_loaded_means_no_preflight(self) -> None:
        """Alone on the GPU a model loads whatever Ollama's estimate says (loadedCount 0)."""
        prediction = predict(Candidate(gemma3_27b(), 65536), (), GPU_24, SERVER)
        assert prediction.preflight_bytes > (prediction.threshold_bytes or 0)
        assert prediction.action == "load"


class TestEvictByMaxLoaded:
    def test_the_automatic_cap_is_three_per_gpu(self) -> None:
        """A fourth model unloads one of three, however much memory is free."""
        loaded = tuple(resident(tiny(name), 2048) for name in ("a", "b", "c"))
        prediction = predict(Candidate(tiny("d"), 2048), loaded, Budget(200 * GIB, 200 * GIB), SERVER)
        assert [(e.name, e.cause) for e in prediction.evicted] == [("a:latest", "max_loaded_models")]

    def test_a_configured_cap(self) -> None:
        """OLLAMA_MAX_LOADED_MODELS=1 replaces whatever is loaded."""
        server = OllamaServer(max_loaded_models=1)
        prediction = predict(Candidate(tiny("b"), 2048), (resident(tiny("a"), 2048),), GPU_24, server)
        assert prediction.action == "evict" and prediction.evicted[0].cause == "max_loaded_models"

    def test_two_gpus_keep_six(self) -> None:
        """Three per GPU: with two GPUs a fourth model loads beside three."""
        loaded = tuple(resident(tiny(name), 2048) for name in ("a", "b", "c"))
        budget = Budget(free_bytes=40 * GIB, total_bytes=48 * GIB, gpu_count=2)
        assert predict(Candidate(tiny("d"), 2048), loaded, budget, SERVER).action == "load"

    def test_known_even_without_a_budget(self) -> None:
        """The cap needs no memory figure: it is predicted on an unknown budget too."""
        loaded = tuple(resident(tiny(name), 2048) for name in ("a", "b", "c"))
        prediction = predict(Candidate(tiny("d"), 2048), loaded, Budget(free_bytes=None), SERVER)
        assert prediction.evicted_names == ("a:latest",) and prediction.fits is None


class TestEvictionOrder:
    def evicted(self, *loaded: Resident, server: OllamaServer = CAP_2) -> str:
        return predict(Candidate(tiny("new"), 2048), loaded, GPU_24, server).evicted_names[0]

    def test_the_shortest_keep_alive_goes_first(self) -> None:
        """findRunnerToUnload sorts by session duration, not by last use."""
        assert self.evicted(
            resident(tiny("a"), 2048, keep_alive_s=600), resident(tiny("b"), 2048, keep_alive_s=60)
        ) == ("b:latest")

    def test_equal_keep_alives_go_by_blob_path(self) -> None:
        """Then by model path: the blob that sorts first goes."""
        assert (
            self.evicted(
                resident(tiny("a"), 2048, path="/blobs/sha256-ff"),
                resident(tiny("b"), 2048, path="/blobs/sha256-0a"),
            )
            == "b:latest"
        )

    def test_the_server_default_stands_in_for_an_unknown_keep_alive(self) -> None:
        """A runner without a keep_alive of its own has OLLAMA_KEEP_ALIVE (here 10m)."""
        server = OllamaServer(max_loaded_models=2, keep_alive_s=600)
        loaded = (resident(tiny("a"), 2048), resident(tiny("b"), 2048, keep_alive_s=300))
        assert self.evicted(*loaded, server=server) == "b:latest"

    @pytest.mark.parametrize("forever", [math.inf, -1.0])
    def test_forever_sorts_last(self, forever: float) -> None:
        """A negative keep_alive is a huge uint64: the runner kept forever goes last."""
        loaded = (
            resident(tiny("a"), 2048, keep_alive_s=forever),
            resident(tiny("b"), 2048, keep_alive_s=86400),
        )
        assert self.evicted(*loaded) == "b:latest"

    def test_an_idle_runner_goes_before_a_busy_one(self) -> None:
        """A busy runner is passed over while an idle one can go."""
        loaded = (
            resident(tiny("a"), 2048, keep_alive_s=1, busy=True),
            resident(tiny("b"), 2048, keep_alive_s=600),
        )
        assert self.evicted(*loaded) == "b:latest"

    def test_all_busy_takes_the_first_in_order(self) -> None:
        """With no idle runner Ollama waits for the first in its order."""
        loaded = (
            resident(tiny("a"), 2048, keep_alive_s=600, busy=True),
            resident(tiny("b"), 2048, busy=True),
        )
        assert self.evicted(*loaded) == "b:latest"


class TestSpill:
    def test_what_does_not_fit_runs_from_system_ram(self) -> None:
        """gemma3:27b at 131072 on 24 GiB: llama.cpp keeps 1 GiB free and spills the rest."""
        prediction = predict(Candidate(gemma3_27b(), 131072), (), GPU_24, SERVER)
        total = prediction.footprint.total_bytes
        assert (prediction.action, prediction.fits) == ("spill", False)
        assert prediction.gpu_bytes == 23 * GIB and prediction.spill_bytes == total - 23 * GIB

    def test_the_fit_target_decides_the_edge(self) -> None:
        """A footprint within the fit target of free spills; with a target of 0 it fits."""
        total = estimate(llama31_8b(), 8192, n_ubatch=1024).total_bytes
        budget = Budget(free_bytes=total + GIB // 2, total_bytes=24 * GIB)
        assert predict(Candidate(llama31_8b(), 8192), (), budget, SERVER).action == "spill"
        server = OllamaServer(fit_target_bytes=0)
        assert predict(Candidate(llama31_8b(), 8192), (), budget, server).action == "load"

    def test_evict_then_still_spill(self) -> None:
        """Evictions that do not make enough room end in a spill, with the evictions listed."""
        loaded = (resident(gemma3_4b(), 8192),)
        prediction = predict(Candidate(gemma3_27b(), 131072), loaded, free_with(GPU_24, *loaded), SERVER)
        assert prediction.action == "spill" and prediction.evicted_names == ("gemma3:4b",)


class TestCpuOnlyHost:
    BUDGET = Budget(free_bytes=16 * GIB, total_bytes=32 * GIB, kind="system", gpu_count=0)

    def test_no_preflight_without_a_gpu(self) -> None:
        """Ollama's pre-flight needs GPUs: on system memory a big estimate evicts nothing."""
        loaded = (resident(gemma3_4b(), 8192),)
        prediction = predict(Candidate(gemma3_27b(), 8192), loaded, self.BUDGET, SERVER)
        assert prediction.evicted == () and prediction.threshold_bytes is None

    def test_a_footprint_beyond_free_ram_does_not_fit(self) -> None:
        """More than the free RAM is the CPU host's spill: swapping or a failed load."""
        prediction = predict(Candidate(gemma3_27b(), 32768), (), self.BUDGET, SERVER)
        assert (prediction.action, prediction.fits, prediction.gpu_bytes) == ("spill", False, 0)

    def test_the_batch_is_the_largest_tier(self) -> None:
        """With no GPU memory to weigh, the automatic batch never steps down."""
        assert predict(Candidate(gemma3_27b(), 65536), (), self.BUDGET, SERVER).num_batch == 2048

    def test_three_models_at_most(self) -> None:
        """The automatic cap on a CPU-only host is three."""
        loaded = tuple(resident(tiny(name), 2048) for name in ("a", "b", "c"))
        assert predict(Candidate(tiny("d"), 2048), loaded, self.BUDGET, SERVER).action == "evict"


class TestBatch:
    def test_the_automatic_batch_steps_down_without_headroom(self) -> None:
        """Where Ollama's estimate passes 60% of free the 2048 batch becomes 1024 or 512."""
        assert (
            predict(Candidate(llama31_8b(), 65536), (), Budget(80 * GIB, 80 * GIB), SERVER).num_batch == 2048
        )
        assert predict(Candidate(llama31_8b(), 98304), (), GPU_24, SERVER).num_batch == 1024
        assert predict(Candidate(llama31_8b(), 131072), (), GPU_24, SERVER).num_batch == 512

    def test_flash_attention_off_on_cuda(self) -> None:
        """Flash attention off on a CUDA GPU with at most 8 GiB free: 256 above 4096."""
        server = OllamaServer(flash_attention="off")
        small = Budget(free_bytes=8 * GIB, total_bytes=8 * GIB)
        assert predict(Candidate(tiny("a"), 8192), (), small, server).num_batch == 256
        assert predict(Candidate(tiny("a"), 8192), (), GPU_24, server).num_batch == 512

    def test_an_embedding_model_pays_no_surcharge(self) -> None:
        """A model without completion gets min(2048, num_ctx) and no pre-flight surcharge."""
        embed = tiny("embed", capabilities=("embedding",))
        prediction = predict(Candidate(embed, 8192), (resident(tiny("a"), 2048),), GPU_24, SERVER)
        assert (prediction.num_batch, prediction.batch_surcharge_bytes, prediction.parallel) == (2048, 0, 1)


class TestUnknownBudget:
    def test_fits_is_unknown(self) -> None:
        """Without a free figure the prediction says so instead of guessing a fit."""
        prediction = predict(Candidate(gemma3_27b(), 8192), (), Budget(free_bytes=None), SERVER)
        assert (prediction.fits, prediction.free_bytes, prediction.gpu_bytes) == (None, None, None)
        assert "free memory unknown" in prediction.reason


class TestBefore030:
    OLD = OllamaServer(version=(0, 24, 0))

    def test_the_older_estimate_and_minimum(self) -> None:
        """llama on the llama.cpp runner: GraphSize, held to free less the 457 MiB minimum, batch 512."""
        loaded = (resident(tiny("a"), 2048, server=self.OLD),)
        predicted = legacy_predicted_bytes(llama31_8b(), 8192)
        budget = Budget(free_bytes=predicted + MINIMUM_MEMORY_BYTES - MIB, total_bytes=24 * GIB)
        prediction = predict(Candidate(llama31_8b(), 8192), loaded, budget, self.OLD)
        assert (prediction.num_batch, prediction.batch_surcharge_bytes) == (512, 0)
        assert prediction.ollama_estimate_bytes == predicted
        assert prediction.evicted_names == ("a:latest",)
        roomy = dataclasses.replace(budget, free_bytes=predicted + MINIMUM_MEMORY_BYTES + MIB)
        assert predict(Candidate(llama31_8b(), 8192), loaded, roomy, self.OLD).action == "load"

    def test_ollamas_engine_sized_from_real_allocations(self) -> None:
        """gemma3 ran on Ollama's own engine before 0.30: its estimate is the footprint."""
        prediction = predict(Candidate(gemma3_27b(), 8192), (), GPU_24, self.OLD)
        assert prediction.ollama_estimate_bytes == prediction.footprint.total_bytes

    def test_a_spill_follows_ollamas_estimate(self) -> None:
        """Ollama chose the layers itself, so its estimate beyond the room spills."""
        predicted = legacy_predicted_bytes(llama31_8b(), 32768)
        budget = Budget(free_bytes=predicted, total_bytes=24 * GIB)
        assert predict(Candidate(llama31_8b(), 32768), (), budget, self.OLD).action == "spill"


class TestAfterLoad:
    def test_the_new_runner_is_reported_as_ollama_reports_it(self) -> None:
        """/api/ps leaves out a sliding-window model's full-attention cache; free drops by it all."""
        candidate = Candidate(gemma3_4b(), 8192)
        prediction = predict(candidate, (), GPU_24, SERVER)
        residents, budget = after_load(prediction, candidate, (), GPU_24, SERVER)
        (new,) = residents
        footprint = prediction.footprint
        assert new.loaded.size_bytes == footprint.total_bytes - footprint.kv_full_bytes
        assert budget.free_bytes == 24 * GIB - footprint.total_bytes

    def test_evicted_runners_are_gone(self) -> None:
        """What the prediction unloaded is no longer loaded, and its memory is back."""
        loaded = (resident(gemma3_4b(), 8192),)
        start = free_with(GPU_24, *loaded)
        candidate = Candidate(gemma3_27b(), 8192)
        prediction = predict(candidate, loaded, start, SERVER)
        residents, _ = after_load(prediction, candidate, loaded, start, SERVER)
        assert [item.name for item in residents] == ["gemma3:27b"]


class TestWorkingSet:
    def test_small_models_stay_side_by_side(self) -> None:
        """Two small models requested in turn are both loaded at the end."""
        result = working_set(
            [Candidate(gemma3_270m(), 8192), Candidate(gemma3_4b(), 8192)], (), GPU_24, SERVER
        )
        assert result.side_by_side and [step.action for step in result.steps] == ["load", "load"]
        assert result.contexts == {"gemma3-270m": 8192, "gemma3:4b": 8192}

    def test_the_second_model_evicts_the_first(self) -> None:
        """gemma3:27b after gemma3:4b on 24 GiB unloads it: they cannot stay together."""
        result = working_set(
            [Candidate(gemma3_4b(), 8192), Candidate(gemma3_27b(), 8192)], (), GPU_24, SERVER
        )
        assert not result.side_by_side and result.resident == ("gemma3:27b",)
        assert result.steps[1].evicted_names == ("gemma3:4b",)


class TestLargestLoadableCtx:
    def test_it_fits_and_the_next_step_does_not(self) -> None:
        """The answer loads fully; every larger candidate does not."""
        candidate = Candidate(gemma3_27b(), 0)
        found = largest_loadable_ctx(candidate, (), GPU_24, SERVER)
        assert found is not None
        assert predict(dataclasses.replace(candidate, num_ctx=found), (), GPU_24, SERVER).fits
        for larger in range(found + 1024, 131072 + 1, 1024):
            assert not predict(dataclasses.replace(candidate, num_ctx=larger), (), GPU_24, SERVER).fits

    def test_the_trained_length_when_everything_fits(self) -> None:
        """A small model on a large GPU fits at its whole trained context."""
        assert largest_loadable_ctx(Candidate(gemma3_270m(), 0), (), GPU_24, SERVER) == 32768

    def test_beside_allows_no_eviction(self) -> None:
        """Beside gemma3:4b, gemma3:27b fits only where Ollama's estimate lets both stay."""
        loaded = (resident(gemma3_4b(), 8192),)
        budget = free_with(GPU_24, *loaded)
        candidate = Candidate(gemma3_27b(), 0)
        anyway = largest_loadable_ctx(candidate, loaded, budget, SERVER)
        beside = largest_loadable_ctx(candidate, loaded, budget, SERVER, beside=True)
        assert anyway is not None and beside is None

    def test_unknown_budget(self) -> None:
        """Without a free figure there is no answer."""
        assert largest_loadable_ctx(Candidate(gemma3_27b(), 0), (), Budget(free_bytes=None), SERVER) is None


class TestSideBySideCtx:
    def test_the_largest_shared_rung(self) -> None:
        """The largest rung where both stay loaded; each model capped at its trained length."""
        models = [Candidate(gemma3_270m(), 0), Candidate(gemma3_4b(), 0)]
        found = side_by_side_ctx(models, (8192, 32768, 131072), (), GPU_24, SERVER)
        assert found is not None
        rung, result = found
        assert result.side_by_side and result.contexts["gemma3-270m"] == min(rung, 32768)
        assert (
            rung == 32768
            or not working_set(
                [dataclasses.replace(m, num_ctx=131072) for m in models], (), GPU_24, SERVER
            ).side_by_side
        )

    def test_none_when_they_cannot_share(self) -> None:
        """gemma3:27b and gemma3:4b never stay together on 24 GiB."""
        models = [Candidate(gemma3_4b(), 0), Candidate(gemma3_27b(), 0)]
        assert side_by_side_ctx(models, (2048, 8192), (), GPU_24, SERVER) is None


class TestBudgetFromSnapshot:
    def test_a_gpu_sample(self) -> None:
        """An NVML sample is a CUDA GPU budget with its free and total bytes."""
        device = GpuDevice(0, "gpu", 24 * GIB, 20 * GIB, 4 * GIB)
        budget = Budget.from_snapshot(GpuSnapshot(source="nvml", devices=(device,)))
        assert (budget.free_bytes, budget.total_bytes, budget.kind, budget.gpu_count, budget.cuda) == (
            20 * GIB,
            24 * GIB,
            "gpu",
            1,
            True,
        )

    def test_system_memory_has_no_gpu(self) -> None:
        """A /proc/meminfo sample counts no GPU, so the CPU cap applies."""
        device = GpuDevice(0, "RAM", 32 * GIB, 16 * GIB, 16 * GIB)
        budget = Budget.from_snapshot(GpuSnapshot(source="system", devices=(device,)))
        assert (budget.kind, budget.gpu_count, budget.on_gpu) == ("system", 0, False)

    def test_an_unknown_sample(self) -> None:
        """A failed read is an unknown budget of the same kind."""
        budget = Budget.from_snapshot(GpuSnapshot(source="nvml", error="no driver"))
        assert (budget.known, budget.kind) == (False, "gpu")


class TestPredictedAction:
    """The record's prediction: ``predict``'s action and evictions, sizing nothing for a reuse."""

    def cases(self) -> list[tuple[Candidate, tuple[Resident, ...], Budget, OllamaServer]]:
        small = (resident(gemma3_4b(), 8192),)
        three = tuple(resident(tiny(name), 2048) for name in ("a", "b", "c"))
        return [
            (Candidate(gemma3_4b(), 8192), small, free_with(GPU_24, *small), SERVER),  # reuse
            (Candidate(gemma3_4b(), 2048), small, free_with(GPU_24, *small), SERVER),  # reload
            (Candidate(tiny("t"), 2048), small, free_with(GPU_24, *small), SERVER),  # load beside
            (Candidate(gemma3_27b(), 8192), small, free_with(GPU_24, *small), SERVER),  # preflight
            (Candidate(tiny("d"), 2048), three, Budget(200 * GIB, 200 * GIB), SERVER),  # the cap
            (Candidate(gemma3_27b(), 131072), (), GPU_24, SERVER),  # spill
        ]

    def test_it_is_predicts_action_and_evictions(self) -> None:
        """Every kind of outcome, as ``predict`` tells it."""
        seen = set()
        for candidate, loaded, budget, server in self.cases():
            prediction = predict(candidate, loaded, budget, server)
            expected = predicted_action(candidate, loaded, budget, server)
            assert (expected.action, expected.evictions) == (prediction.action, prediction.evicted_names)
            seen.add(prediction.action)
        assert seen == {"reuse", "reload", "load", "evict", "spill"}

    def test_a_reuse_sizes_nothing(self) -> None:
        """A runner that serves the request as it is needs no sizes: facts too thin to size a load
        still predict its reuse (``predict`` raises for want of them)."""
        thin = ModelFacts(name="thin:latest", context_length=8192)
        loaded = (Resident(LoadedModel("thin:latest", "", GIB, GIB, context_length=8192, expires_at=None)),)
        with pytest.raises(ValueError, match="unknown"):
            predict(Candidate(thin, 8192), loaded, GPU_24, SERVER)
        assert predicted_action(Candidate(thin, 8192), loaded, GPU_24, SERVER) == ("reuse", ())
        with pytest.raises(ValueError):  # anything else is sized, and raises as predict does
            predicted_action(Candidate(thin, 4096), loaded, GPU_24, SERVER)
