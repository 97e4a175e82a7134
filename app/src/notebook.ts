/**
 * "Open in notebook": the cell that loads a run's results, put in the current notebook (below its
 * active cell) or in a new one, and run there.
 */

import { JupyterFrontEnd } from '@jupyterlab/application';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

/** The cell: `workbench.load_run` reads the run folder (a JSON string is a valid Python literal). */
export function loadRunCell(path: string): string {
  return `import workbench\nresults = workbench.load_run(${JSON.stringify(path)})\nresults`;
}

async function newNotebook(app: JupyterFrontEnd, docManager: IDocumentManager): Promise<NotebookPanel> {
  const model = await docManager.newUntitled({ path: '', type: 'notebook' });
  const kernel = app.serviceManager.kernelspecs.specs?.default;
  const widget = docManager.open(model.path, 'Notebook', kernel ? { name: kernel } : undefined);
  if (!(widget instanceof NotebookPanel)) {
    throw new Error(`could not open ${model.path} as a notebook`);
  }
  return widget;
}

/** Insert the loading cell for `path` and run it; returns the notebook it went to. */
export async function openInNotebook(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  docManager: IDocumentManager,
  path: string
): Promise<NotebookPanel> {
  const panel = tracker.currentWidget ?? (await newNotebook(app, docManager));
  await panel.context.ready;
  app.shell.activateById(panel.id);
  const notebook = panel.content;
  const active = notebook.activeCell;
  const reuse =
    notebook.widgets.length === 1 && active !== null && active.model.sharedModel.getSource() === '';
  if (!reuse) {
    NotebookActions.insertBelow(notebook);
  }
  const cell = notebook.activeCell;
  if (cell === null) {
    throw new Error('the notebook has no active cell');
  }
  cell.model.sharedModel.setSource(loadRunCell(path));
  await panel.sessionContext.ready;
  await NotebookActions.run(notebook, panel.sessionContext);
  return panel;
}
