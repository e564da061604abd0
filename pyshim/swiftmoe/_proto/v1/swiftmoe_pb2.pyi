from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_SOURCE_UNSPECIFIED: _ClassVar[PlanSource]
    PLAN_SOURCE_STRATEGY: _ClassVar[PlanSource]
    PLAN_SOURCE_LAST_VALID: _ClassVar[PlanSource]
    PLAN_SOURCE_STATIC_FALLBACK: _ClassVar[PlanSource]
PLAN_SOURCE_UNSPECIFIED: PlanSource
PLAN_SOURCE_STRATEGY: PlanSource
PLAN_SOURCE_LAST_VALID: PlanSource
PLAN_SOURCE_STATIC_FALLBACK: PlanSource

class Topology(_message.Message):
    __slots__ = ("world_size", "ranks_per_node", "slots_per_rank", "intra_node_bandwidth", "inter_node_bandwidth")
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANKS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_PER_RANK_FIELD_NUMBER: _ClassVar[int]
    INTRA_NODE_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    INTER_NODE_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    world_size: int
    ranks_per_node: int
    slots_per_rank: int
    intra_node_bandwidth: float
    inter_node_bandwidth: float
    def __init__(self, world_size: _Optional[int] = ..., ranks_per_node: _Optional[int] = ..., slots_per_rank: _Optional[int] = ..., intra_node_bandwidth: _Optional[float] = ..., inter_node_bandwidth: _Optional[float] = ...) -> None: ...

class CostModel(_message.Message):
    __slots__ = ("token_bytes", "flops_per_token", "flops_per_second", "burst_slots_per_rank", "burst_threshold")
    TOKEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_SLOTS_PER_RANK_FIELD_NUMBER: _ClassVar[int]
    BURST_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    token_bytes: float
    flops_per_token: _containers.RepeatedScalarFieldContainer[float]
    flops_per_second: float
    burst_slots_per_rank: int
    burst_threshold: float
    def __init__(self, token_bytes: _Optional[float] = ..., flops_per_token: _Optional[_Iterable[float]] = ..., flops_per_second: _Optional[float] = ..., burst_slots_per_rank: _Optional[int] = ..., burst_threshold: _Optional[float] = ...) -> None: ...

class OptionSpec(_message.Message):
    __slots__ = ("name", "description", "default_value", "type", "min", "max", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    default_value: str
    type: str
    min: float
    max: float
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., default_value: _Optional[str] = ..., type: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class StrategyInfo(_message.Message):
    __slots__ = ("name", "description", "version", "options", "path", "sha256", "load_window_option")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LOAD_WINDOW_OPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    version: str
    options: _containers.RepeatedCompositeFieldContainer[OptionSpec]
    path: str
    sha256: str
    load_window_option: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ..., options: _Optional[_Iterable[_Union[OptionSpec, _Mapping]]] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., load_window_option: _Optional[str] = ...) -> None: ...

class ShardRange(_message.Message):
    __slots__ = ("rank", "offset", "length")
    RANK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    rank: int
    offset: int
    length: int
    def __init__(self, rank: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class LayerShardLayout(_message.Message):
    __slots__ = ("layer", "expert_param_numel", "ranges")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    EXPERT_PARAM_NUMEL_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    layer: int
    expert_param_numel: int
    ranges: _containers.RepeatedCompositeFieldContainer[ShardRange]
    def __init__(self, layer: _Optional[int] = ..., expert_param_numel: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[ShardRange, _Mapping]]] = ...) -> None: ...

class LayerPlan(_message.Message):
    __slots__ = ("slots", "replicas", "rank_load", "max_over_mean")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RANK_LOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_OVER_MEAN_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    replicas: _containers.RepeatedScalarFieldContainer[int]
    rank_load: _containers.RepeatedScalarFieldContainer[float]
    max_over_mean: float
    def __init__(self, slots: _Optional[_Iterable[int]] = ..., replicas: _Optional[_Iterable[int]] = ..., rank_load: _Optional[_Iterable[float]] = ..., max_over_mean: _Optional[float] = ...) -> None: ...

class RemapSummary(_message.Message):
    __slots__ = ("send_bytes", "recv_bytes", "total_bytes", "changed_slots", "migrated_bytes")
    SEND_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECV_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    send_bytes: _containers.RepeatedScalarFieldContainer[int]
    recv_bytes: _containers.RepeatedScalarFieldContainer[int]
    total_bytes: int
    changed_slots: int
    migrated_bytes: int
    def __init__(self, send_bytes: _Optional[_Iterable[int]] = ..., recv_bytes: _Optional[_Iterable[int]] = ..., total_bytes: _Optional[int] = ..., changed_slots: _Optional[int] = ..., migrated_bytes: _Optional[int] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("job_id", "iteration", "strategy", "world_size", "slots_per_rank", "layers", "max_over_mean", "remap", "source", "note", "fallback_reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_PER_RANK_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_OVER_MEAN_FIELD_NUMBER: _ClassVar[int]
    REMAP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    iteration: int
    strategy: str
    world_size: int
    slots_per_rank: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerPlan]
    max_over_mean: float
    remap: RemapSummary
    source: PlanSource
    note: str
    fallback_reason: str
    def __init__(self, job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., strategy: _Optional[str] = ..., world_size: _Optional[int] = ..., slots_per_rank: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerPlan, _Mapping]]] = ..., max_over_mean: _Optional[float] = ..., remap: _Optional[_Union[RemapSummary, _Mapping]] = ..., source: _Optional[_Union[PlanSource, str]] = ..., note: _Optional[str] = ..., fallback_reason: _Optional[str] = ...) -> None: ...

class RegisterJobRequest(_message.Message):
    __slots__ = ("job_id", "topology", "experts_per_layer", "expert_param_numel", "bytes_per_param", "optimizer_bytes_per_param", "strategy", "strategy_options", "current_slots", "strategy_sha256", "history", "cost_model")
    class StrategyOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_PER_LAYER_FIELD_NUMBER: _ClassVar[int]
    EXPERT_PARAM_NUMEL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_PARAM_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_BYTES_PER_PARAM_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_SHA256_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    COST_MODEL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    topology: Topology
    experts_per_layer: _containers.RepeatedScalarFieldContainer[int]
    expert_param_numel: _containers.RepeatedScalarFieldContainer[int]
    bytes_per_param: int
    optimizer_bytes_per_param: int
    strategy: str
    strategy_options: _containers.ScalarMap[str, str]
    current_slots: _containers.RepeatedCompositeFieldContainer[LayerSlots]
    strategy_sha256: str
    history: JobHistory
    cost_model: CostModel
    def __init__(self, job_id: _Optional[str] = ..., topology: _Optional[_Union[Topology, _Mapping]] = ..., experts_per_layer: _Optional[_Iterable[int]] = ..., expert_param_numel: _Optional[_Iterable[int]] = ..., bytes_per_param: _Optional[int] = ..., optimizer_bytes_per_param: _Optional[int] = ..., strategy: _Optional[str] = ..., strategy_options: _Optional[_Mapping[str, str]] = ..., current_slots: _Optional[_Iterable[_Union[LayerSlots, _Mapping]]] = ..., strategy_sha256: _Optional[str] = ..., history: _Optional[_Union[JobHistory, _Mapping]] = ..., cost_model: _Optional[_Union[CostModel, _Mapping]] = ...) -> None: ...

class LayerSlots(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, slots: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterJobResponse(_message.Message):
    __slots__ = ("job_id", "shard_layout", "initial_plan", "strategy", "topology", "defaults", "plugin_refused")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PLAN_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_REFUSED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    shard_layout: _containers.RepeatedCompositeFieldContainer[LayerShardLayout]
    initial_plan: Plan
    strategy: StrategyInfo
    topology: Topology
    defaults: _containers.RepeatedScalarFieldContainer[str]
    plugin_refused: str
    def __init__(self, job_id: _Optional[str] = ..., shard_layout: _Optional[_Iterable[_Union[LayerShardLayout, _Mapping]]] = ..., initial_plan: _Optional[_Union[Plan, _Mapping]] = ..., strategy: _Optional[_Union[StrategyInfo, _Mapping]] = ..., topology: _Optional[_Union[Topology, _Mapping]] = ..., defaults: _Optional[_Iterable[str]] = ..., plugin_refused: _Optional[str] = ...) -> None: ...

class LayerLoads(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportLoadsRequest(_message.Message):
    __slots__ = ("job_id", "iteration", "layers")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    iteration: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerLoads]
    def __init__(self, job_id: _Optional[str] = ..., iteration: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerLoads, _Mapping]]] = ...) -> None: ...

class ReportLoadsResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListStrategiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ExportJobResponse(_message.Message):
    __slots__ = ("job_id", "history")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    history: JobHistory
    def __init__(self, job_id: _Optional[str] = ..., history: _Optional[_Union[JobHistory, _Mapping]] = ...) -> None: ...

class JobHistory(_message.Message):
    __slots__ = ("layers",)
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[LayerHistory]
    def __init__(self, layers: _Optional[_Iterable[_Union[LayerHistory, _Mapping]]] = ...) -> None: ...

class LayerHistory(_message.Message):
    __slots__ = ("reports", "series")
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[LayerLoads]
    series: _containers.RepeatedCompositeFieldContainer[NamedSeries]
    def __init__(self, reports: _Optional[_Iterable[_Union[LayerLoads, _Mapping]]] = ..., series: _Optional[_Iterable[_Union[NamedSeries, _Mapping]]] = ...) -> None: ...

class NamedSeries(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ListStrategiesResponse(_message.Message):
    __slots__ = ("strategies",)
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyInfo]
    def __init__(self, strategies: _Optional[_Iterable[_Union[StrategyInfo, _Mapping]]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StrategyLayerInput(_message.Message):
    __slots__ = ("layer", "num_experts", "predicted_load", "last_load", "current_slots", "earlier_loads")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NUM_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LOAD_FIELD_NUMBER: _ClassVar[int]
    LAST_LOAD_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SLOTS_FIELD_NUMBER: _ClassVar[int]
    EARLIER_LOADS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    num_experts: int
    predicted_load: _containers.RepeatedScalarFieldContainer[float]
    last_load: _containers.RepeatedScalarFieldContainer[int]
    current_slots: _containers.RepeatedScalarFieldContainer[int]
    earlier_loads: _containers.RepeatedCompositeFieldContainer[LayerLoads]
    def __init__(self, layer: _Optional[int] = ..., num_experts: _Optional[int] = ..., predicted_load: _Optional[_Iterable[float]] = ..., last_load: _Optional[_Iterable[int]] = ..., current_slots: _Optional[_Iterable[int]] = ..., earlier_loads: _Optional[_Iterable[_Union[LayerLoads, _Mapping]]] = ...) -> None: ...

class StrategyPlanRequest(_message.Message):
    __slots__ = ("topology", "iteration", "layers", "options", "expert_weight_bytes", "expert_optimizer_bytes", "current_ref", "cost_model")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPERT_OPTIMIZER_BYTES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REF_FIELD_NUMBER: _ClassVar[int]
    COST_MODEL_FIELD_NUMBER: _ClassVar[int]
    topology: Topology
    iteration: int
    layers: _containers.RepeatedCompositeFieldContainer[StrategyLayerInput]
    options: _containers.ScalarMap[str, str]
    expert_weight_bytes: _containers.RepeatedScalarFieldContainer[int]
    expert_optimizer_bytes: _containers.RepeatedScalarFieldContainer[int]
    current_ref: int
    cost_model: CostModel
    def __init__(self, topology: _Optional[_Union[Topology, _Mapping]] = ..., iteration: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[StrategyLayerInput, _Mapping]]] = ..., options: _Optional[_Mapping[str, str]] = ..., expert_weight_bytes: _Optional[_Iterable[int]] = ..., expert_optimizer_bytes: _Optional[_Iterable[int]] = ..., current_ref: _Optional[int] = ..., cost_model: _Optional[_Union[CostModel, _Mapping]] = ...) -> None: ...

class ValidateOptionsRequest(_message.Message):
    __slots__ = ("options",)
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: _containers.ScalarMap[str, str]
    def __init__(self, options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ValidateOptionsResponse(_message.Message):
    __slots__ = ("problems",)
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, problems: _Optional[_Iterable[str]] = ...) -> None: ...

class StrategyLayerOutput(_message.Message):
    __slots__ = ("slots",)
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, slots: _Optional[_Iterable[int]] = ...) -> None: ...

class StrategyPlanResponse(_message.Message):
    __slots__ = ("layers", "migrated_bytes", "note", "response_id")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[StrategyLayerOutput]
    migrated_bytes: int
    note: str
    response_id: int
    def __init__(self, layers: _Optional[_Iterable[_Union[StrategyLayerOutput, _Mapping]]] = ..., migrated_bytes: _Optional[int] = ..., note: _Optional[str] = ..., response_id: _Optional[int] = ...) -> None: ...
