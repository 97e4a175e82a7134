/**
 * The interpretability workbench in JupyterLab: a Runs side panel, Run and Compare views, and a New
 * analysis form (Launcher and command palette), over the server extension's API (workbench.lab).
 */

import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { WorkbenchAPI } from './api';
import { CompareView } from './compareView';
import { workbenchIcon } from './icons';
import { NewAnalysis } from './newAnalysis';
import { openInNotebook } from './notebook';
import { RunView } from './runView';
import { RunsPanel } from './runsPanel';

const CATEGORY = 'Workbench';

export namespace CommandIDs {
  export const showRuns = 'workbench:show-runs';
  export const openRun = 'workbench:open-run';
  export const compare = 'workbench:compare';
  export const newAnalysis = 'workbench:new-analysis';
  export const refresh = 'workbench:refresh-runs';
}

function mainArea<T extends Widget>(content: T, id: string): MainAreaWidget<T> {
  const widget = new MainAreaWidget({ content });
  widget.id = id;
  widget.title.label = content.title.label;
  widget.title.caption = content.title.caption;
  widget.title.icon = workbenchIcon;
  widget.title.closable = true;
  return widget;
}

function activate(
  app: JupyterFrontEnd,
  restorer: ILayoutRestorer | null,
  launcher: ILauncher | null,
  palette: ICommandPalette | null,
  notebooks: INotebookTracker | null,
  docManager: IDocumentManager | null
): void {
  const api = new WorkbenchAPI();
  const views = new WidgetTracker<MainAreaWidget>({ namespace: 'interp-workbench' });
  const show = (widget: MainAreaWidget) => {
    if (!widget.isAttached) {
      app.shell.add(widget, 'main');
      void views.add(widget);
    }
    app.shell.activateById(widget.id);
    return widget;
  };
  const find = (id: string) => views.find(w => w.id === id);
  const toNotebook =
    notebooks && docManager
      ? async (path: string) => {
          await openInNotebook(app, notebooks, docManager, path);
        }
      : null;

  const panel = new RunsPanel({
    api,
    openRun: id => void app.commands.execute(CommandIDs.openRun, { id }),
    compare: ids => void app.commands.execute(CommandIDs.compare, { ids }),
    newAnalysis: () => void app.commands.execute(CommandIDs.newAnalysis)
  });
  panel.title.icon = workbenchIcon;
  app.shell.add(panel, 'left', { rank: 650 });
  restorer?.add(panel, panel.id);

  app.commands.addCommand(CommandIDs.showRuns, {
    label: 'Show Workbench Runs',
    caption: 'The run folders under the runs root',
    execute: () => app.shell.activateById(panel.id)
  });

  app.commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh Workbench Runs',
    execute: () => panel.refresh()
  });

  app.commands.addCommand(CommandIDs.openRun, {
    label: args => (args.id ? `Open Run ${args.id}` : 'Open Run'),
    execute: args => {
      const id = String(args.id ?? '');
      if (!id) {
        throw new Error('workbench:open-run needs the run id (its folder under the runs root)');
      }
      const widgetId = `wb-run:${id}`;
      return show(find(widgetId) ?? mainArea(new RunView({ api, id, openInNotebook: toNotebook }), widgetId));
    }
  });

  app.commands.addCommand(CommandIDs.compare, {
    label: 'Compare Workbench Runs',
    caption: 'Compare the runs checked in the Runs panel',
    isEnabled: args => Array.isArray(args.ids) || panel.selected.length >= 2,
    execute: args => {
      const ids = Array.isArray(args.ids) ? (args.ids as string[]) : panel.selected;
      if (ids.length < 2) {
        throw new Error('Check two or more runs of the same kind in the Runs panel to compare them.');
      }
      const widgetId = `wb-compare:${ids.join('|')}`;
      return show(
        find(widgetId) ??
          mainArea(
            new CompareView({
              api,
              ids,
              openRun: id => void app.commands.execute(CommandIDs.openRun, { id })
            }),
            widgetId
          )
      );
    }
  });

  let form: MainAreaWidget<NewAnalysis> | null = null;
  app.commands.addCommand(CommandIDs.newAnalysis, {
    label: args => (args.isLauncher ? 'New Analysis' : 'New Workbench Analysis…'),
    caption: 'Start a workbench analysis in the background; it shows in the Runs panel',
    icon: workbenchIcon,
    execute: () => {
      if (form === null || form.isDisposed) {
        const content = new NewAnalysis(api, id => void app.commands.execute(CommandIDs.openRun, { id }));
        content.started.connect(() => {
          app.shell.activateById(panel.id);
          void panel.refresh();
        });
        form = mainArea(content, 'wb-new-analysis');
      }
      return show(form);
    }
  });

  launcher?.add({ command: CommandIDs.newAnalysis, category: CATEGORY, rank: 1, args: { isLauncher: true } });
  for (const command of [
    CommandIDs.newAnalysis,
    CommandIDs.showRuns,
    CommandIDs.refresh,
    CommandIDs.compare
  ]) {
    palette?.addItem({ command, category: CATEGORY });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'interp-workbench-lab:plugin',
  description: 'Runs, run view, compare and new-analysis panels for the interpretability workbench.',
  autoStart: true,
  optional: [ILayoutRestorer, ILauncher, ICommandPalette, INotebookTracker, IDocumentManager],
  activate
};

export default plugin;
