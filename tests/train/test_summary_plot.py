"""summary.png reads well from the first epoch: a marker per epoch, whole-epoch ticks, limits that do not
blow a single point up to the whole panel, and the learning rate beside loss and accuracy."""
import csv

import matplotlib

from van_focal.train.steps import summary_figure

matplotlib.use('Agg')


def _summary(path, rows):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_summary_of_one_epoch_is_readable(tmp_path):
    fig = summary_figure(_summary(tmp_path / 'summary.csv', [dict(epoch=0, train_loss=1.78, eval_loss=1.75,
                                                                   eval_top1=25.0, eval_top5=79.2, lr=5e-4)]))
    loss, accuracy, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ['loss', 'validation accuracy, best top-1 25.00 (epoch 0)',
                                                   'learning rate']
    for ax in fig.axes:
        assert ax.get_xlim() == (-0.5, 0.5) and [t for t in ax.get_xticks() if -0.5 <= t <= 0.5] == [0]
        assert all(line.get_marker() == 'o' for line in ax.get_lines())
    low, high = accuracy.get_ylim()
    assert low <= 25 - 5 and high >= 79.2 + 5 and -1.5 <= low and high <= 101.5
    assert lr.get_ylim()[0] == 0 and lr.get_ylim()[1] > 5e-4
    assert loss.get_ylim()[1] - loss.get_ylim()[0] >= 0.17  # not a hair's breadth around 1.75 .. 1.78


def test_summary_ticks_are_whole_epochs_and_a_restart_row_replaces_the_earlier_one(tmp_path):
    rows = [dict(epoch=e, train_loss=2 - e / 10, eval_loss=2 - e / 12, eval_top1=10 + 3 * e, eval_top5=50 + e,
                 lr=1e-3 * (1 - e / 12)) for e in range(12)]
    fig = summary_figure(_summary(tmp_path / 'summary.csv', rows + [dict(rows[11], eval_top1=99.0)]))
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 11]
        assert ticks and all(t == int(t) for t in ticks)
        assert all(len(line.get_xdata()) == 12 for line in ax.get_lines())
    assert fig.axes[1].get_title().endswith('best top-1 99.00 (epoch 11)')
