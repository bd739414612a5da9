"""codiag.models: shapes on every dataset, GradAlign's cnn4, the residual models' structure."""
import pytest
import torch
from torch import nn

from codiag.data import DATASETS, dataset_spec
from codiag.errors import UsageError
from codiag.models import MODELS, Normalize, PreActResNet, WideResNet, build_model, first_conv

RESIDUAL_BLOCKS = {"preact_resnet18": 8, "resnet18": 8, "wrn28_10": 12, "wrn34_10": 15}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches: intra-op threads only add overhead (ten-fold on a shared, loaded CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry():
    assert set(MODELS) == {"cnn4", "small_cnn", "small_cnn_w16", "preact_resnet18", "resnet18", "wrn28_10", "wrn34_10"}
    with pytest.raises(UsageError, match="unknown model 'resnet50'"):
        build_model("resnet50", dataset_spec("cifar10"))


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_on_every_dataset(name, dataset):
    spec = dataset_spec(dataset)
    # on the meta device: shapes without allocating or initialising 46 M parameters
    with torch.device("meta"):
        model = build_model(name, spec)
        out = model(torch.empty(3, *spec.input_shape))
    assert out.shape == (3, spec.num_classes)
    first = next(model.children())
    assert isinstance(first, Normalize) and first is model.normalize
    assert first.mean.shape == (1, spec.channels, 1, 1)
    conv = first_conv(model)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == spec.channels
    assert len(getattr(model, "blocks", [])) == RESIDUAL_BLOCKS.get(name, 0)


@pytest.mark.parametrize("name", ["cnn4", "small_cnn", "small_cnn_w16", "preact_resnet18", "resnet18"])
def test_real_forward_and_input_gradient(name):
    torch.manual_seed(0)
    spec = dataset_spec("fashion_mnist" if name not in ("preact_resnet18", "resnet18") else "cifar10")
    model = build_model(name, spec).eval()
    x = torch.rand(2, *spec.input_shape, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_cnn4_is_gradaligns_single_layer_cnn():
    spec = dataset_spec("cifar10")
    model = build_model("cnn4", spec)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and first_conv(model) is convs[0] is model.conv
    conv = convs[0]
    assert conv.weight.shape == (4, 3, 3, 3)  # exactly 4 filters of 3x3
    assert conv.stride == (1, 1) and conv.padding == (1, 1) and conv.bias is not None
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 4 * 32 * 32
    # ReLU directly between the convolution and the linear layer
    x = torch.rand(2, 3, 32, 32)
    feat = torch.relu(conv(model.normalize(x))).flatten(1)
    assert torch.allclose(model(x), linears[0](feat))
    assert build_model("cnn4", spec, n_filters=1).conv.out_channels == 1  # GradAlign's single-filter CNN


def test_normalize_is_the_first_layer_in_pixel_units():
    spec = dataset_spec("cifar10")
    norm = Normalize(spec.mean, spec.std)
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), (x - mean) / std)
    assert list(norm.parameters()) == [] and {"mean", "std"} <= set(norm.state_dict())
    torch.manual_seed(0)
    model = build_model("cnn4", spec)
    # the model is cnn4 applied to the normalised input: eps is measured before Normalize
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), model.linear(torch.relu(model.conv((x - mean) / std)).flatten(1)), atol=1e-6)


def test_residual_blocks_are_listed_in_forward_order_without_duplicate_weights():
    spec = dataset_spec("cifar10")
    torch.manual_seed(0)
    for model in (WideResNet(spec, depth=10, widen=1), PreActResNet(spec, (1, 1, 1, 1))):
        called = []
        handles = [b.register_forward_pre_hook(lambda m, inp, i=i, called=called: called.append(i))
                   for i, b in enumerate(model.blocks)]
        model(torch.rand(2, 3, 32, 32))
        for h in handles:
            h.remove()
        assert called == list(range(len(model.blocks))) and len(called) > 0
        assert not any(k.startswith("blocks") for k in model.state_dict())
    # the stage layout of the real models (meta device: no allocation)
    with torch.device("meta"):
        pre = build_model("preact_resnet18", spec)
        wrn = build_model("wrn34_10", spec)
    assert [b.conv1.out_channels for b in pre.blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [b.conv1.stride[0] for b in pre.blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [b.conv1.out_channels for b in wrn.blocks] == [160] * 5 + [320] * 5 + [640] * 5


def test_resnet18_is_the_post_activation_cifar_resnet():
    """The FastAT Benchmark's ResNet-18 (the CIFAR form of He et al. 2016): 11,173,962 parameters on
    CIFAR-10, a BN-ReLU stem, blocks that end in a ReLU after the sum, BN on the projection shortcut."""
    spec = dataset_spec("cifar10")
    torch.manual_seed(0)
    model = build_model("resnet18", spec).eval()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert [b.conv1.stride[0] for b in model.blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [b.shortcut is not None for b in model.blocks] == [False, False, True, False, True, False, True, False]
    assert isinstance(model.blocks[2].shortcut[1], nn.BatchNorm2d)
    outs = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: outs.append(o))
    model(torch.rand(2, 3, 32, 32))
    hook.remove()
    assert outs[0].min() >= 0 and (outs[0] == 0).any()  # post-activation: a ReLU after the residual sum


def test_widresnet_parameter_counts_match_the_published_models():
    spec = dataset_spec("cifar10")
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in build_model(name, spec).parameters())
                  for name in ("wrn28_10", "wrn34_10")}
    # WRN-28-10: 36.5 M (Zagoruyko & Komodakis 2016); WRN-34-10: 46.2 M (TRADES / Rice et al.)
    assert counts == {"wrn28_10": 36_479_194, "wrn34_10": 46_160_474}


def test_wideresnet_dropout_is_off_by_default():
    spec = dataset_spec("cifar10")
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = WideResNet(spec, depth=10, widen=1).train()
    torch.manual_seed(0)
    dropped = WideResNet(spec, depth=10, widen=1, dropout=0.5).train()
    assert torch.equal(plain(x), plain(x))  # BatchNorm in train mode is deterministic per batch
    assert not torch.equal(dropped(x), dropped(x))
    with pytest.raises(UsageError, match="6n\\+4"):
        WideResNet(spec, depth=12)


def test_first_conv_of_a_model_without_convolutions():
    assert first_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None
